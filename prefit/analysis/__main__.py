"""`python -m prefit.analysis SWEEP`: the same as `python -m prefit.analyze SWEEP`."""

import sys

from prefit.analysis.cli import analyze_main

sys.exit(analyze_main())
