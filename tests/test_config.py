"""Configs composed in-process (Hydra's compose API): presets, and every bad value refused in one line.

What `python -m prefit.train` does before it fits anything: compose conf/ onto the schema, validate, check
the memory a cell needs, find the data. Composing here takes milliseconds; tests/test_train.py runs a few of
the same cases through the command line for the exit status and stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefit import train as app
from prefit.config import Config, validate
from prefit.data import load_images

CONF = Path(app.__file__).resolve().parents[1] / "conf"


def composed(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def checked(*overrides: str) -> Config:
    """Everything a job checks before fitting: composition, values, memory, the data folder."""
    cfg = composed(*overrides)
    validate(cfg)
    app.check_memory(cfg, torch.device("cpu"))
    if cfg.dataset.name in ("cifar_dir", "image_dir"):
        load_images(cfg.dataset)
    return cfg


BAD = [
    (["model.hls=0"], "model.hls"),
    (["model.hfs=-5"], "model.hfs"),
    (["model.hfs=2.5"], "model.hfs"),
    (["model.hfs=abc"], "model.hfs"),
    (["scheme=[random,nonsense]"], "scheme/nonsense"),
    (["train.epochs=0"], "train.epochs"),
    (["train.engine=fast"], "train.engine"),
    (["train.kernels=cuda"], "train.kernels"),
    (["train.matmul_precision=tf64"], "train.matmul_precision"),
    (["protocol=both"], "protocol"),
    (["protocol=chained", "scheme=[random,class_mean]"], "protocol=chained"),
    (["dataset=cifar_dir"], "dataset.path"),
    (["dataset=cifar_dir", "dataset.path=/no/such/folder"], "/no/such/folder"),
    (["dataset=cifar_dir", "dataset.path=."], "CIFAR-10 python layout"),
    (["dataset.split=valid"], "dataset.split"),
    (["dataset=folder"], "dataset"),
    (["dataset.resolution=64"], "CIFAR images are 32x32"),
    (["dataset=image_dir"], "dataset=image_dir needs dataset.path"),
    (["dataset=image_dir", "dataset.path=/no/such/folder"], "/no/such/folder"),
    (["dataset=image_dir", "dataset.path=."], "no class sub-folders"),
    (["dataset=image_dir", "dataset.path=.", "dataset.resolution=1"], "dataset.resolution must be in 2..4096"),
    (["seed=-1"], "seed"),
    (["seed=99999999999999999999"], "seed"),
    (["train.threads=-3"], "train.threads"),
    (["train.max_members=0"], "train.max_members"),
    (["model.w0=inf"], "model.w0 must be a finite number"),
    (["train.lr=inf"], "train.lr must be a finite number"),
    (["train.lr=nan"], "train.lr must be a finite number"),
    (["train.betas=[0.9,1.5]"], "train.betas"),
    (["model.hfs=100000"], "GiB"),
    (["model.depth=3"], "model.depth"),
    (["+model.depth=3"], "unknown key(s) model.depth"),
    (["+unknown.key=1"], "unknown key(s) unknown"),
]


@pytest.mark.parametrize("overrides,mentions", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused_in_one_line(overrides, mentions, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dataset.path=. is an empty folder
    with pytest.raises(app.USER_ERRORS) as error:
        checked(*overrides)
    message = app.one_line(error.value)
    assert mentions in message and "\\n" not in message, message


def test_defaults_and_presets_compose_and_validate():
    cfg = composed()
    validate(cfg)
    assert (cfg.model.hls, cfg.model.hfs, cfg.train.epochs, cfg.dataset.n_triples) == (2, 32, 2000, 20)
    assert cfg.scheme.selected() == ["random", "same_class", "other_class"] and cfg.protocol.name == "independent"
    smoke = composed("+experiment=smoke", "model.hfs=8")
    assert (smoke.train.epochs, smoke.dataset.n_triples, smoke.model.hfs) == (30, 3, 8)
    chained = composed("+experiment=repro")
    assert chained.protocol.name == "chained"
    six = composed("scheme=[random,same_class,other_class,class_mean,multi_same,meta]")
    validate(six)
    assert six.scheme.meta is not None and six.scheme.meta.outer_steps == 200


def test_choices_are_enums_and_the_image_side_comes_from_the_dataset():
    cfg = composed("train.matmul_precision=3xtf32", "train.engine=sequential")
    assert cfg.train.matmul_precision == "3xtf32" and f"{cfg.train.engine}" == "sequential"
    assert cfg.dataset.side == 32 and cfg.dataset.resolution is None  # CIFAR: 32x32, its own size
    folder = composed("dataset=image_dir", "dataset.path=/tiles")
    assert (folder.dataset.name, folder.dataset.resolution, folder.dataset.side) == ("image_dir", None, 64)
    assert composed("dataset=image_dir", "dataset.path=/tiles", "dataset.resolution=48").dataset.side == 48
