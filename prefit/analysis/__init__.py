"""The analysis of prefit sweeps, one concern per module.

load        reading and validating a sweep folder (psnr.parquet, run.json, recon.npz)
variants    what sets jobs apart beyond their cell (`train.lr=0.0002`): the group keys
reduce      curves, one row per fit (AUC, capped AUC, epochs to 30/40 dB), paired differences, orders
stats       bootstrap CIs (scipy.stats.bootstrap), Wilcoxon p, verdicts per measure: stats.parquet
tables      markdown tables
figures     curves, box plots, paired differences, reconstructions, robustness scatter
render      the Jinja2 templates (templates/*.md.j2) every summary and report is worded in
pipeline    one sweep end to end: analyse (in memory), analyze (the files of docs/formats.md)
summary     summary.md of one sweep
protocol    the protocol report: chained beside independent
robustness  the robustness report: two sweeps that differ only in arithmetic
cli         python -m prefit.analyze and python -m prefit.report
"""

from .load import AnalysisError, Sweep, load_sweep
from .pipeline import Analysed, analyse, analyze

__all__ = ["AnalysisError", "Analysed", "Sweep", "analyse", "analyze", "load_sweep"]
