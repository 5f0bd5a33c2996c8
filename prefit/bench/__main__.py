"""`python -m prefit.bench`: the command, documented in the package's docstring."""

import sys

from prefit.bench import main

if __name__ == "__main__":
    sys.exit(main())
