"""A meta-learned initialisation (Reptile, Nichol et al. 2018, as Tancik et al. 2021 used it) for the `meta` scheme.

From theta, fit a meta-batch of pool images (none in the triples) for a few Adam steps each as members of the
batched engine, then theta <- theta + eps_t (mean_i theta_i - theta), eps_t annealed linearly to 0. The result is
cached per cell and config under a content hash, written atomically, so it is learned once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import trange

from prefit.config import Config, MetaConfig
from prefit.data import coordinate_grid, side_of
from prefit.engine import fit_batched
from prefit.engine.options import FitOptions
from prefit.io import atomic_path, user_cache
from prefit.model import Params, stack_params, triple_generator
from prefit.schema import cell_stem

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 1  # bump when the learning procedure changes, so old cache entries are not reused
META_STREAM = 1_000_003  # the "triple number" of the meta-initialisation's own random start


def inner_options(cfg: Config, meta: MetaConfig) -> FitOptions:
    """The options of Reptile's inner fits: the study's fit options, with the meta settings' steps and lr."""
    return replace(cfg.train, epochs=meta.inner_steps, lr=meta.inner_lr, snapshot_epochs=[], progress=False)


def _computed(options: object, kind: type) -> dict:
    """`options`' values of the fields of dataclass `kind`, less the runtime ones (how a job runs)."""
    return {f.name: getattr(options, f.name) for f in fields(kind) if not f.metadata.get("runtime")}


def cache_key(cfg: Config, meta: MetaConfig, data_source: str, pool: np.ndarray) -> str:
    """A hash of all the learned initialisation depends on (model, meta settings, seed, pool, inner fit options)."""
    content = {
        "version": ALGORITHM_VERSION,
        "model": asdict(cfg.model),
        "meta": _computed(meta, type(meta)),
        "fit": _computed(inner_options(cfg, meta), FitOptions),
        "seed": cfg.seed,
        "data": data_source,
        "pool": hashlib.sha256(np.ascontiguousarray(pool, dtype=np.int64).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def reptile(cfg: Config, meta: MetaConfig, signals: torch.Tensor, device: torch.device, max_members: int) -> Params:
    """Learn one initialisation of the cell's network on `signals` [pool, pixels, 3]; (W [in, out], b [out]) pairs."""
    hls, hfs, field = cfg.model.hls, cfg.model.hfs, cfg.model.field(cfg.seed)
    theta = field.init_params(hls, hfs, triple_generator(cfg.seed, META_STREAM))
    rng = np.random.default_rng([cfg.seed, META_STREAM])
    inner = inner_options(cfg, meta)
    coords = coordinate_grid(side_of(signals.shape[1]))
    for step in trange(meta.outer_steps, desc=f"{hls}x{hfs} meta", disable=not cfg.train.progress, leave=False):
        tasks = rng.choice(signals.shape[0], size=meta.meta_batch, replace=False)
        start = stack_params([theta] * meta.meta_batch)
        fitted = fit_batched(start, signals[tasks], coords, inner, field, device, max_members).params
        finite = torch.stack([torch.isfinite(w).all(dim=(1, 2)) for w, _ in fitted]).all(dim=0)
        if not finite.any():
            log.warning("meta step %d: every task diverged; step skipped", step)
            continue
        eps = meta.outer_lr * (1.0 - step / meta.outer_steps)
        theta = [
            (w + eps * (fw[finite].mean(0) - w), b + eps * (fb[finite].mean(0).reshape(-1) - b))
            for (w, b), (fw, fb) in zip(theta, fitted)
        ]
    return theta


def learned_init(
    cfg: Config, data_source: str, pool: np.ndarray, signals: torch.Tensor, device: torch.device, max_members: int
) -> tuple[Params, dict]:
    """The cached initialisation for this cell and config, learned (and cached) on a miss."""
    meta = cfg.scheme.meta
    key = cache_key(cfg, meta, data_source, pool)
    folder = Path(meta.cache_dir).expanduser() if meta.cache_dir else user_cache("meta")
    path = folder / f"meta_{cell_stem(cfg.model.hls, cfg.model.hfs)}_{key}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            params = [(w, b) for w, b in saved["params"]]
            return params, {"cache": "hit", "path": str(path), "key": key}
        except Exception as error:  # a damaged entry is relearned, never used
            log.warning("meta cache entry %s is unreadable (%s): learning it again", path, error)
    params = reptile(cfg, meta, signals, device, max_members)
    with atomic_path(path) as tmp:
        torch.save({"params": [(w.contiguous(), b.contiguous()) for w, b in params], "key": key}, tmp)
    return params, {"cache": "miss", "path": str(path), "key": key}
