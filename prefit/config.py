"""Structured configs: the typed schema (registered as `prefit_schema`, first in `conf/config.yaml`'s defaults) that
Hydra composes `conf/`'s YAML onto, so a value of the wrong type or an unknown key is rejected while composing.
Value checks a type cannot express (`model.hls >= 1`) live in `validate`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from prefit.choices import CIFAR_SIDE, IMAGE_DIR_SIDE, DatasetName, Device, Engine, Family, Protocol, Split
from prefit.engine.options import FitOptions
from prefit.errors import ConfigError
from prefit.keys import ARITHMETIC, RUNTIME, RUNTIME_ARITHMETIC, marked_keys, without
from prefit.model import Field, make_field
from prefit.schema import SCHEME_ORDER, cell_dirname

__all__ = ["Config", "ConfigError", "TrainConfig", "validate", "register"]


@dataclass
class DatasetConfig:
    """Where the images come from and how many triples to draw from them."""

    name: DatasetName = DatasetName.cifair10  # cifair10 (downloaded), cifar_dir or image_dir (folders)
    root: str | None = field(default=None, metadata=RUNTIME)  # cifair10's cache; None: $PREFIT_DATA or user cache
    path: str | None = None  # the folder for cifar_dir and image_dir
    split: Split = Split.train  # train (as the original) or test; CIFAR only
    n_triples: int = 20
    # pixels a side: image_dir resizes to it (null: 64); CIFAR is 32x32 and takes null or 32
    resolution: int | None = None

    url: str = "https://github.com/cvjena/cifair/releases/download/v1.0/ciFAIR-10.zip"

    @property
    def side(self) -> int:
        """Pixels a side of the images the study fits: the resolution, else the dataset's own."""
        return self.resolution or (IMAGE_DIR_SIDE if self.name == "image_dir" else CIFAR_SIDE)


@dataclass
class ModelConfig:
    """A neural field of a `family` (prefit.model): `hls` hidden layers of `hfs` hidden features, and the family's own
    constants (`conf/model/<family>.yaml` sets them; another family's stay null)."""

    family: Family = Family.siren
    hls: int = 2
    hfs: int = 32
    w0: float | None = 30.0  # siren: sine frequency of the first and hidden layers
    sigma: float | None = None  # ffn: standard deviation of the Fourier features' matrix B
    features: int | None = None  # ffn: columns of B (the first layer reads 2 x features)
    scale: float | None = None  # gauss: exp(-(scale z)^2)

    def field(self, seed: int) -> Field:
        """The engines' description of this network (the Fourier features' B drawn from `seed`)."""
        return make_field(self.family, seed, self.w0, self.sigma, self.features, self.scale)


# each family's own constants: set for it, null for the others
FAMILY_KEYS = {Family.siren: ("w0",), Family.ffn: ("sigma", "features"), Family.gauss: ("scale",)}


@dataclass
class SchemeConfig:
    """One way of starting the fit on A (random, same_class, other_class: no options of their own)."""


@dataclass
class ClassMeanConfig(SchemeConfig):
    """Pre-fit on the mean image of A's class over a pool of images outside the triples."""

    pool_size: int = 1000


@dataclass
class MultiSameConfig(SchemeConfig):
    """Pre-fit on k images of A's class in turn (none of them in any triple), then fit A."""

    k: int = 4


@dataclass
class MetaConfig(SchemeConfig):
    """Reptile (Nichol et al. 2018) meta-learned initialisation, learned on a pool disjoint from the triples: each outer
    step fits `meta_batch` pool images for `inner_steps` steps (lr `inner_lr`), then moves the initialisation
    `outer_lr` (annealed to 0) towards their mean. Cost: outer_steps x meta_batch x inner_steps member-epochs."""

    outer_steps: int = 200
    inner_steps: int = 20
    inner_lr: float = 1e-4
    outer_lr: float = 1.0
    meta_batch: int = 10
    pool_size: int = 1000
    cache_dir: str | None = field(default=None, metadata=RUNTIME)  # None: $PREFIT_CACHE, else the user cache


@dataclass
class SharedEncoderConfig(SchemeConfig):
    """STRAINER (Vyas et al., NeurIPS 2024): one network pre-fit jointly on k images of A's class (multi_same's, none in
    any triple), every layer shared but the last `head_layers`, a head per image; A's fit starts from the shared layers
    and the triple's own random head, so that it differs from `random` in the shared layers only (prefit.shared)."""

    k: int = 10
    head_layers: int = 1


@dataclass
class SchemesConfig:
    """The selected schemes: a field is set when its file in `conf/scheme/` is selected, else None."""

    random: SchemeConfig | None = None
    same_class: SchemeConfig | None = None
    other_class: SchemeConfig | None = None
    class_mean: ClassMeanConfig | None = None
    multi_same: MultiSameConfig | None = None
    meta: MetaConfig | None = None
    shared_encoder: SharedEncoderConfig | None = None

    def selected(self) -> list[str]:
        return [name for name in SCHEME_ORDER if getattr(self, name) is not None]


@dataclass
class ProtocolConfig:
    """independent: every scheme from the triple's shared init; chained: the original's aliasing, A->B->A->C->A."""

    name: Protocol = Protocol.independent


@dataclass
class TrainConfig(FitOptions):
    """How each fit runs (`FitOptions`: the engine's own options) and how the job executes."""

    engine: Engine = field(default=Engine.batched, metadata=ARITHMETIC)  # batched | sequential
    device: Device = field(default=Device.auto, metadata=RUNTIME_ARITHMETIC)  # auto | cpu | cuda
    # members fitted at once; None: from the device's memory
    max_members: int | None = field(default=None, metadata=RUNTIME_ARITHMETIC)
    # torch threads per job; None: the cores divided among parallel jobs
    threads: int | None = field(default=None, metadata=RUNTIME_ARITHMETIC)
    overwrite: bool = field(default=False, metadata=RUNTIME)
    # save the cell's progress (checkpoint.pt) every this many minutes of wall time, to resume a cut job; 0: never
    checkpoint_minutes: float = field(default=5.0, metadata=RUNTIME)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scheme: SchemesConfig = field(default_factory=SchemesConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42
    experiment: Any = None  # set by +experiment presets, for the record


# The key sets of prefit.keys, read from the marks above: every other module imports these.
RUNTIME_KEYS = tuple(marked_keys(Config, "runtime"))
ARITHMETIC_KEYS = tuple(marked_keys(Config, "arithmetic"))
# The keys that are a cell itself, and their columns in every table.
CELL_KEYS = {"model.hls": "hls", "model.hfs": "hfs", "protocol.name": "protocol"}
# Overrides that name no cell folder besides the runtime keys and Hydra's own: presets, the data's location.
UNNAMED_OVERRIDES = ("experiment", "dataset", "dataset.path")


def study_of(config: dict[str, Any]) -> dict[str, Any]:
    """A config (plain data, composed now or recorded in a run.json) as a study: what decides the results. No
    preset name, no runtime keys, `dataset.path` resolved so that two spellings of one folder are one study."""
    study = without(config, ("experiment", *RUNTIME_KEYS))
    if isinstance(study.get("model"), dict):
        study["model"].setdefault("family", "siren")  # a record from before other families existed is a SIREN's
    dataset = study.get("dataset")
    if isinstance(dataset, dict) and dataset.get("path"):
        dataset["path"] = str(Path(dataset["path"]).expanduser().resolve())
    return study


def study_config(cfg: Config) -> dict[str, Any]:
    """The study of a composed config (`study_of` its plain data)."""
    return study_of(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True))


def register() -> None:
    """Register the schema so that `conf/config.yaml` can extend it, and the `prefit.cell` resolver."""
    cs = ConfigStore.instance()
    cs.store(name="prefit_schema", node=Config)
    if not OmegaConf.has_resolver("prefit.cell"):
        OmegaConf.register_new_resolver("prefit.cell", cell_folder)


def cell_folder(hls: int, hfs: int, overrides: str = "") -> str:
    """`hydra.sweep.subdir`: the cell's folder, named by what the job computes (runtime keys left out)."""

    def names(item: str) -> bool:
        key = item.split("=", 1)[0].lstrip("+~")
        return key not in (*RUNTIME_KEYS, *UNNAMED_OVERRIDES) and not key.startswith("hydra.")

    items = re.split(r",(?=[+~]?[\w.]+=)", overrides)  # a list value's commas (`+experiment=[grid,smoke]`) stay
    return cell_dirname(hls, hfs, ",".join(item for item in items if item and names(item)))


def unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys set on a composed config that its dataclasses do not declare (`+model.depth=3` adds one silently)."""
    if not is_dataclass(node):
        return []
    declared = {f.name for f in fields(node)}
    keys = [f"{prefix}{name}" for name in vars(node) if name not in declared]
    for name in declared:
        keys += unknown_keys(getattr(node, name), f"{prefix}{name}.")
    return sorted(keys)


POSITIVE = ("model.w0", "model.sigma", "model.scale", "train.lr", "train.eps")
POSITIVE += ("scheme.meta.inner_lr", "scheme.meta.outer_lr")
# key: what its value must be, and the test; keys under a scheme that is not selected are not checked
RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "seed": ("be an integer in [0, 2^63)", lambda v: 0 <= v < 2**63),
    **dict.fromkeys(("train.threads", "train.max_members"), ("be >= 1 or null", lambda v: v is None or v >= 1)),
    "train.betas": ("be finite numbers in [0, 1)", lambda v: all(0 <= b < 1 for b in v)),
    **dict.fromkeys(("model.hls", "model.hfs", "train.epochs"), ("be an integer >= 1", lambda v: v >= 1)),
    **dict.fromkeys(POSITIVE, ("be > 0", lambda v: v > 0)),
    "train.plateau_patience": ("be >= 0", lambda v: v >= 0),
    "model.features": ("be an integer >= 1", lambda v: v >= 1),
    "train.checkpoint_minutes": ("be >= 0 (0: no checkpoints)", lambda v: v >= 0),
    "train.plateau_factor": ("be in (0, 1)", lambda v: 0 < v < 1),
    "train.plateau_threshold": ("be a finite number", math.isfinite),
    **dict.fromkeys(
        ("dataset.n_triples", "scheme.multi_same.k", "scheme.class_mean.pool_size")
        + ("scheme.shared_encoder.k", "scheme.shared_encoder.head_layers")
        + tuple(f"scheme.meta.{k}" for k in ("outer_steps", "inner_steps", "meta_batch", "pool_size")),
        ("be >= 1", lambda v: v >= 1),
    ),
}
# a NaN fails no comparison: these are checked first
FINITE = (*POSITIVE, "train.plateau_factor", "train.checkpoint_minutes")


def validate(cfg: Config) -> None:
    """Reject values that type-check but make no sense, with a message naming the key."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    model = cfg.model
    for family, keys in FAMILY_KEYS.items():
        for key in keys:
            value = getattr(model, key)
            if family == model.family:
                need(value is not None, f"model.{key} must be set for model={family} (conf/model/{family}.yaml)")
            else:
                need(value is None, f"model.{key} is model={family}'s; model={model.family} takes none (leave it null)")
    unknown = unknown_keys(cfg)
    need(not unknown, f"unknown key(s) {', '.join(unknown)}: not in the schema (prefit/config.py); check the spelling")
    for key, (requirement, test) in RULES.items():
        group, _, name = key.rpartition(".")
        node = reduce(getattr, group.split("."), cfg) if group else cfg
        if node is not None and (value := getattr(node, name)) is not None:  # null: checked above or allowed
            need(key not in FINITE or math.isfinite(value), f"{key} must be a finite number, got {value}")
            need(test(value), f"{key} must {requirement}, got {list(value) if key == 'train.betas' else value}")
    dataset, resolution = cfg.dataset, cfg.dataset.resolution
    for name, what in (
        ("cifar_dir", "in the CIFAR-10 python layout"),
        ("image_dir", "of class sub-folders of PNG or JPEG files"),
    ):
        need(dataset.name != name or bool(dataset.path), f"dataset={name} needs dataset.path=DIR (a folder {what})")
    if dataset.name == "image_dir":
        need(resolution is None or 2 <= resolution <= 4096, f"dataset.resolution must be in 2..4096, got {resolution}")
    else:
        need(
            resolution in (None, CIFAR_SIDE),
            f"CIFAR images are {CIFAR_SIDE}x{CIFAR_SIDE}: dataset.resolution applies to dataset=image_dir, "
            f"got {resolution}",
        )
    schemes = cfg.scheme.selected()
    need(bool(schemes), "select at least one scheme, e.g. 'scheme=[random,same_class,other_class]'")
    need(
        cfg.protocol.name != "chained" or set(schemes) <= {"random", "same_class", "other_class"},
        "protocol=chained reproduces the original's three schemes only (random, same_class, other_class)",
    )
    meta = cfg.scheme.meta
    need(meta is None or meta.meta_batch <= meta.pool_size, "scheme.meta.meta_batch must be <= scheme.meta.pool_size")
    heads = cfg.scheme.shared_encoder.head_layers if cfg.scheme.shared_encoder is not None else 1
    need(
        heads <= model.hls + 1,
        f"scheme.shared_encoder.head_layers must be <= model.hls + 1 = {model.hls + 1} (the first layer is always "
        f"shared), got {heads}",
    )
