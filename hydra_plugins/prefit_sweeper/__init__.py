"""Hydra's basic sweeper, launching the costliest cells first (`hydra/sweeper=prefit`, the project's default).

A local sweep runs a few jobs at a time; launched longest first, the cells that finish last are the small ones and
no large one runs alone at the end. A cell's cost: its weights (`prefit.model.n_weights`) x pixels x epochs x
triples; ties keep the command line's order. Folders are named by cell, so an interrupted sweep resumes the same way.
"""

from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override

from prefit.config import Config
from prefit.model import n_weights

_STUDY = Config()  # the schema's defaults, for the keys a job's overrides leave alone
DEFAULTS = {
    "model.hls": _STUDY.model.hls,
    "model.hfs": _STUDY.model.hfs,
    "train.epochs": _STUDY.train.epochs,
    "dataset.n_triples": _STUDY.dataset.n_triples,
    "dataset.resolution": _STUDY.dataset.side,  # a job's dataset preset may say otherwise; 32 for CIFAR
}


def job_cost(overrides: list[str]) -> float:
    """Estimated work of one job from its overrides (keys it does not set take the study's defaults)."""
    values: dict[str, Any] = dict(DEFAULTS)
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in values:
            try:
                values[key] = int(value)
            except ValueError:
                pass  # not a number: the config's own validation reports it
    weights = n_weights(values["model.hls"], values["model.hfs"])
    pixels = values["dataset.resolution"] ** 2
    return float(weights) * pixels * values["train.epochs"] * values["dataset.n_triples"]


class CostOrderedSweeper(BasicSweeper):
    """BasicSweeper whose jobs are ordered by decreasing `job_cost` before they are batched."""

    @staticmethod
    def split_arguments(overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
        jobs = sorted(jobs, key=job_cost, reverse=True)  # stable: equal costs keep their order
        if max_batch_size is None:
            return [jobs]
        return [jobs[i : i + max_batch_size] for i in range(0, len(jobs), max_batch_size)]


@dataclass
class CostOrderedSweeperConf:
    _target_: str = "hydra_plugins.prefit_sweeper.CostOrderedSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="prefit", node=CostOrderedSweeperConf, provider="prefit")
