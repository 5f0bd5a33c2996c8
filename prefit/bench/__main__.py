"""`python -m prefit.bench`: the command, documented in the package's docstring."""

from prefit.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
