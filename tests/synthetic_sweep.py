"""Writers of fake sweep folders in the exact formats of docs/formats.md, for the analysis tests.

No training happens here: trajectories are made up (or passed in by a test), and every job folder gets the
three files a real job writes: `psnr.parquet`, `recon.npz` and `run.json`. Pre-fit schemes also get `prefit`
rows with wildly different PSNR values, so a test notices if the analysis forgets to keep only `fit` rows.

A job's run.json holds a `study` (the config that decides results, as prefit.records writes it) only when one is
given (`study_of`, `write_variant_sweep`): the analysis then tells jobs that differ in other keys (`train.lr`,
`seed`) apart by those keys' columns.

Besides the original three schemes the writer knows the newer ones (`ALL_SCHEMES`, `new_schemes=True`), laid
out as docs/formats.md describes them: `class_mean` pre-fits once on its class's mean image (no index, so its
`prefit_index` is null and its `prefit_label` A's class), `multi_same` pre-fits on MULTI_SAME_STAGES images
of A's class in turn before the fit, `meta` fits A straight from its (meta-learned) start, like `random`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from prefit.schema import PSNR_COLUMNS

SCHEMES = ("random", "same_class", "other_class")
ALL_SCHEMES = (*SCHEMES, "class_mean", "multi_same", "meta")
PREFIT_SCHEMES = {"same_class", "other_class", "class_mean", "multi_same"}
MULTI_SAME_STAGES = 3  # pre-fits of a multi_same member before its fit of A

# docs/formats.md: the columns psnr.parquet has, written here in float64 and plain strings (the compact format
# writes float32 and dictionary strings), so that the analysis' tests also check that both read alike
PSNR_DTYPES = {name: "float64" if kind == "float" else kind for name, kind in PSNR_COLUMNS.items()}

Trajectories = Mapping[tuple[str, int], np.ndarray]


def ramp_trajectories(
    n_triples: int, epochs: int, schemes: Iterable[str] = SCHEMES, seed: int = 0
) -> dict[tuple[str, int], np.ndarray]:
    """Plausible PSNR curves: a noisy log ramp from ~10 dB, faster for the pre-fit schemes."""
    rng = np.random.default_rng(seed)
    out = {}
    for rank, scheme in enumerate(schemes):
        for triple in range(n_triples):
            rate = 4.0 + 1.5 * rank + rng.uniform(0.0, 1.0)
            curve = 10.0 + rate * np.log1p(np.arange(epochs)) + rng.normal(0.0, 0.3, epochs)
            out[(scheme, triple)] = curve
    return out


def _rows(hls: int, hfs: int, protocol: str, scheme: str, triple: int, seed: int, **columns) -> pd.DataFrame:
    """One fit's rows; `columns` holds phase, stage, psnr and the target/prefit index and label."""
    psnr = columns.pop("psnr")
    with np.errstate(over="ignore", divide="ignore"):
        loss = 4.0 / np.power(10.0, psnr / 10.0)
    base = {"hls": hls, "hfs": hfs, "protocol": protocol, "scheme": scheme}
    return pd.DataFrame(
        {
            **base,
            "phase": columns.pop("phase"),
            "stage": columns.pop("stage"),
            "triple": triple,
            "epoch": np.arange(len(psnr)),
            "psnr": psnr,
            "loss": loss,
            "lr": 1e-4,
            **columns,
            "seed": seed,
            "engine": "batched",
        }
    )


def _prefit_plan(scheme: str, triple: int) -> list[tuple[int, int | None, int]]:
    """The pre-fits of a member before its fit of A: (target_index, prefit_index of the next fit, label).

    Indices: A is 1000 t + 1, the same-class image 1000 t + 2, the other-class image 1000 t + 3, multi_same's
    further images of A's class 1000 t + 4, 5, ...; a class mean image has no index (-1 in its pre-fit rows).
    """
    label = triple % 10
    if scheme == "same_class":
        return [(1000 * triple + 2, 1000 * triple + 2, label)]
    if scheme == "other_class":
        return [(1000 * triple + 3, 1000 * triple + 3, (label + 1) % 10)]
    if scheme == "class_mean":
        return [(-1, None, label)]
    if scheme == "multi_same":
        images = [1000 * triple + 2] + [1000 * triple + 4 + k for k in range(MULTI_SAME_STAGES - 1)]
        return [(image, image, label) for image in images]
    return []


def psnr_frame(
    hls: int,
    hfs: int,
    trajectories: Trajectories,
    protocol: str = "independent",
    seed: int = 42,
    with_prefit_rows: bool = True,
) -> pd.DataFrame:
    """The `psnr.parquet` rows of one cell: one `fit` trajectory per (scheme, triple), plus pre-fit rows."""
    parts = []
    for (scheme, triple), curve in trajectories.items():
        curve = np.asarray(curve, dtype=np.float64)
        key = {"hls": hls, "hfs": hfs, "protocol": protocol, "scheme": scheme, "triple": triple, "seed": seed}
        target, target_label = 1000 * triple + 1, triple % 10
        plan = _prefit_plan(scheme, triple)
        for stage, (image, _, label) in enumerate(plan):
            if with_prefit_rows:
                # Pre-fit rows: another image, absurd PSNR values that would show up in any mean.
                parts.append(
                    _rows(
                        **key,
                        phase="prefit",
                        stage=stage,
                        psnr=np.full(len(curve), 500.0 + stage),
                        target_index=image,
                        target_label=label,
                        prefit_index=pd.NA,
                        prefit_label=pd.NA,
                    )
                )
        if plan:
            prefit = pd.NA if plan[-1][1] is None else plan[-1][1]
            prefit_label = plan[-1][2]
        else:
            prefit, prefit_label = pd.NA, pd.NA
        parts.append(
            _rows(
                **key,
                phase="fit",
                stage=len(plan),
                psnr=curve,
                target_index=target,
                target_label=target_label,
                prefit_index=prefit,
                prefit_label=prefit_label,
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return frame[list(PSNR_DTYPES)].astype(PSNR_DTYPES)


def recon_arrays(hls: int, hfs: int, trajectories: Trajectories, snapshot_epochs: Iterable[int]) -> dict:
    """The `recon.npz` arrays of one cell, with reconstructions made up and PSNR read off the trajectories."""
    rng = np.random.default_rng(hls * 10_000 + hfs)
    keys = sorted(trajectories, key=lambda k: (k[1], ALL_SCHEMES.index(k[0]) if k[0] in ALL_SCHEMES else 99))
    n_epochs = min(len(v) for v in trajectories.values())
    epochs = np.array([e if e >= 0 else n_epochs - 1 for e in snapshot_epochs], dtype=np.int64)
    epochs = epochs[(epochs >= 0) & (epochs < n_epochs)]
    triples = sorted({t for _, t in keys})
    return {
        "hls": np.int64(hls),
        "hfs": np.int64(hfs),
        "epochs": epochs,
        "scheme": np.array([s for s, _ in keys]),
        "triple": np.array([t for _, t in keys], dtype=np.int64),
        "recon": rng.integers(0, 256, (len(keys), len(epochs), 32, 32, 3), dtype=np.uint8),
        "psnr": np.array([np.asarray(trajectories[k], dtype=np.float64)[epochs] for k in keys]),
        "triple_images": rng.integers(0, 256, (len(triples), 3, 32, 32, 3), dtype=np.uint8),
        "triple_indices": np.array([[1000 * t + k for k in (1, 2, 3)] for t in triples], dtype=np.int64),
    }


def study_of(hls: int, hfs: int, protocol: str = "independent", **overrides: object) -> dict:
    """A run.json `study` laid out as prefit.records writes it, with dotted overrides as keyword arguments
    spelled with `__` for the dot (`train__lr=2e-4`, `seed=1`)."""
    study: dict = {
        "dataset": {"name": "cifar_dir", "path": "/data/cifar", "split": "train", "n_triples": 3},
        "model": {"hls": hls, "hfs": hfs, "w0": 30.0},
        "scheme": {
            "random": {},
            "same_class": {},
            "other_class": {},
            "class_mean": None,
            "multi_same": None,
            "meta": None,
        },
        "protocol": {"name": protocol},
        "train": {"epochs": 40, "lr": 1e-4, "betas": [0.9, 0.999], "snapshot_epochs": [0, 100, 500, -1]},
        "seed": 42,
    }
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = study
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return study


def write_cell(
    folder: Path,
    hls: int,
    hfs: int,
    trajectories: Trajectories,
    protocol: str = "independent",
    recon: bool = True,
    snapshot_epochs: Iterable[int] = (0, 10, -1),
    wall_s: float = 1.5,
    study: Mapping | None = None,
) -> Path:
    """One job folder: psnr.parquet, recon.npz (optional) and run.json (`wall_s` its recorded run time; `study`
    its study, none when not given)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = psnr_frame(hls, hfs, trajectories, protocol=protocol)
    frame.to_parquet(folder / "psnr.parquet", index=False)
    if recon:
        np.savez_compressed(folder / "recon.npz", **recon_arrays(hls, hfs, trajectories, snapshot_epochs))
    schemes = sorted({s for s, _ in trajectories})
    n_triples = len({t for _, t in trajectories})
    epochs = max(len(v) for v in trajectories.values())
    run = {
        "status": "complete",
        "config": {
            "model": {"hls": hls, "hfs": hfs, "w0": 30.0},
            "dataset": {"name": "synthetic", "n_triples": n_triples},
            "train": {"epochs": epochs, "seed": 42},
            "protocol": {"name": protocol},
            "schemes": schemes,
        },
        "cell": {"hls": hls, "hfs": hfs},
        "members": len(trajectories),
        "fits": len(trajectories) + sum(len(_prefit_plan(s, t)) for s, t in trajectories),
        "wall_s": wall_s,
        "device": "cpu",
        "versions": {"python": "3.11", "torch": "2.3", "prefit": "0.1.0"},
        "started": "2025-01-01T00:00:00",
        "finished": "2025-01-01T00:00:01",
    }
    if study is not None:
        run["study"] = dict(study)
    (folder / "run.json").write_text(json.dumps(run, indent=2))
    return folder


def write_variant_sweep(
    root: Path,
    variants: Sequence[Mapping[str, object]],
    cells: Iterable[tuple[int, int]] = ((2, 32), (3, 32)),
    n_triples: int = 3,
    epochs: int = 20,
    recon: bool = True,
) -> Path:
    """A sweep over other keys too: one job per cell and variant (`variants`: study overrides as for study_of,
    e.g. [{"train__lr": 1e-4}, {"train__lr": 2e-4}]), in folders named as Hydra's (`2hls_32hfs,train.lr=0.0001`),
    each with its study in run.json and trajectories of its own (a later variant climbs faster)."""
    root = Path(root)
    for hls, hfs in cells:
        for rank, overrides in enumerate(variants):
            traj = ramp_trajectories(n_triples, epochs, seed=hls * 1000 + hfs + 7 * rank)
            traj = {k: v + 2.0 * rank for k, v in traj.items()}
            name = ",".join([f"{hls}hls_{hfs}hfs", *(f"{k.replace('__', '.')}={v}" for k, v in overrides.items())])
            write_cell(root / name, hls, hfs, traj, recon=recon, study=study_of(hls, hfs, **overrides))
    return root


def write_synthetic_sweep(
    root: Path,
    cells: Iterable[tuple[int, int]] = ((2, 32), (3, 32), (2, 64)),
    n_triples: int = 3,
    epochs: int = 40,
    schemes: Iterable[str] = SCHEMES,
    protocol: str = "independent",
    recon: bool = True,
    nonfinite: bool = False,
    new_schemes: bool = False,
    wall_s: float = 1.5,
) -> Path:
    """A small sweep folder laid out as a Hydra multirun (one numbered job folder per cell).

    nonfinite: put a NaN (a diverged fit) and a +inf (a saturated one) into the first cell's trajectories.
    new_schemes: add class_mean, multi_same and meta to the schemes (ALL_SCHEMES when schemes is the default).
    wall_s: each job's run time in its run.json.
    """
    root = Path(root)
    schemes = tuple(schemes)
    if new_schemes:
        schemes += tuple(s for s in ALL_SCHEMES if s not in schemes)
    for job, (hls, hfs) in enumerate(cells):
        traj = ramp_trajectories(n_triples, epochs, schemes, seed=hls * 1000 + hfs)
        if nonfinite and job == 0:
            traj[(schemes[-1], 0)][epochs // 2 :] = np.nan
            traj[(schemes[0], n_triples - 1)][-3:] = np.inf
        write_cell(root / str(job), hls, hfs, traj, protocol=protocol, recon=recon, wall_s=wall_s)
    return root


def copy_jobs(sweep: Path, to: Path, jobs: Iterable[str], names: Iterable[str] | None = None) -> Path:
    """Another sweep folder holding copies of some job folders of `sweep` (as a sweep's cells are copied from the
    machine that ran them), each under its own name or the one `names` gives; returns `to`."""
    to = Path(to)
    jobs = list(jobs)
    for job, name in zip(jobs, list(names) if names is not None else jobs):
        shutil.copytree(Path(sweep) / job, to / name)
    return to
