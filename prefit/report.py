"""`python -m prefit.report --independent A --chained B` and `python -m prefit.report robustness A B`: the entry
point of the reports (prefit.analysis.protocol, prefit.analysis.robustness)."""

import sys

from prefit.analysis.cli import report_main as main

if __name__ == "__main__":
    sys.exit(main())
