"""The benchmark, `python -m prefit.bench`: its command line and bench.json's format are in `prefit.bench.options`."""

from prefit.bench.options import BenchError, Options, parse_args
from prefit.bench.report import main, run_bench

__all__ = ["BenchError", "Options", "main", "parse_args", "run_bench"]
