"""The project's sweeper (hydra_plugins/prefit_sweeper): the costliest cells are launched first."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.prefit_sweeper import CostOrderedSweeper, job_cost


def jobs(*arguments: str, max_batch_size: int | None = None) -> list[list[list[str]]]:
    overrides = OverridesParser.create().parse_overrides(list(arguments))
    return CostOrderedSweeper.split_arguments(overrides, max_batch_size)


def cells(batch: list[list[str]]) -> list[tuple[str, str]]:
    return [tuple(o.split("=")[1] for o in job if o.startswith("model.")) for job in batch]


def test_make_run_cells_start_with_the_largest():
    (batch,) = jobs("model.hls=2,3", "model.hfs=32,64", "dataset=cifar_dir")
    assert cells(batch) == [("3", "64"), ("2", "64"), ("3", "32"), ("2", "32")]
    assert all("dataset=cifar_dir" in job for job in batch)


def test_cost_follows_weights_epochs_and_triples_and_ties_keep_their_order():
    assert job_cost(["model.hls=8", "model.hfs=1024"]) > job_cost(["model.hls=2", "model.hfs=1024"])
    assert job_cost(["model.hfs=64", "train.epochs=100"]) < job_cost(["model.hfs=64"])
    assert job_cost(["model.hfs=64", "dataset.n_triples=3"]) < job_cost(["model.hfs=64"])
    at = {side: job_cost(["model.hfs=64", f"dataset.resolution={side}"]) for side in (32, 64)}
    assert at[64] == 4 * at[32] and at[32] == job_cost(["model.hfs=64"])  # CIFAR's 32 unless told
    (batch,) = jobs("seed=1,2,3")
    assert [job[0] for job in batch] == ["seed=1", "seed=2", "seed=3"]


def test_batches_are_cut_after_ordering():
    batches = jobs("model.hfs=32,1024,64", max_batch_size=2)
    assert [cells(b) for b in batches] == [[("1024",), ("64",)], [("32",)]]
