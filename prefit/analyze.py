"""`python -m prefit.analyze SWEEP [--psnr-cap DB] [--ci-method METHOD]`: the analysis of a sweep (prefit.analysis)."""

import sys

from prefit.analysis.cli import analyze_main as main

if __name__ == "__main__":
    sys.exit(main())
