"""The analysis of prefit sweeps, one concern per module.

folders     the sweep folders read: one, or several of one study merged (a cell in two read once, or refused)
load        reading and validating a sweep's jobs (psnr.parquet, run.json, recon.npz)
groups      the group columns of every table: the cell and the study keys that set a sweep's jobs apart
reduce      curves, one row per fit (AUC, capped AUC, epochs to 30/40 dB), paired differences
stats       bootstrap CIs (scipy.stats.bootstrap), Wilcoxon p, verdicts per measure: stats.parquet
tables      markdown tables, the templates (templates/*.md.j2) every report is worded in, summary.md
figures     curves, box plots, paired differences, reconstructions, robustness scatter
pipeline    a sweep end to end: compute_analysis (in memory), analyze (the files of docs/formats.md),
            read_analysis and load_analysis (an analysis folder read back, analysed first when out of date)
protocol    the protocol report: chained beside independent
robustness  the robustness report: two sweeps that differ only in arithmetic
resolution  the resolution report: one sweep's cells at several image sizes
cli         python -m prefit.analyze and python -m prefit.report
"""

from .load import AnalysisError, Sweep, load_sweep
from .pipeline import Analysis, Options, analyze, compute_analysis, load_analysis, read_analysis

__all__ = ["AnalysisError", "Analysis", "Options", "Sweep", "analyze", "compute_analysis", "load_analysis"]
__all__ += ["load_sweep", "read_analysis"]
