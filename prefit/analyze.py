"""`python -m prefit.analyze SWEEP [analysis.psnr_cap=59]`: the entry point of the analysis (prefit.analysis)."""

import sys

from prefit.analysis.cli import analyze_main as main

if __name__ == "__main__":
    sys.exit(main())
