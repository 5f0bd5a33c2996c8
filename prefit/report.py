"""`python -m prefit.report --independent A --chained B`, `python -m prefit.report robustness A B` and
`python -m prefit.report resolution SWEEP`: the reports (prefit.analysis.protocol, .robustness, .resolution)."""

import sys

from prefit.analysis.cli import report_main as main

if __name__ == "__main__":
    sys.exit(main())
