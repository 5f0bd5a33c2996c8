"""prefit: does pre-fitting a SIREN on another image make it fit a target image faster?

Modules: config (typed Hydra configs), data (images, triples), model (the SIREN), optim (per-member Adam and
plateau schedule), engine (the fits), schemes (plans of fits), train (the Hydra app, one job a cell), analyze
(curves, statistics, figures, reports), bench (the engines' timing).
"""

__version__ = "0.1.0"
