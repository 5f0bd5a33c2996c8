"""The closed sets of choices a config makes, as `str` Enums: OmegaConf rejects a value outside the set while the
config is composed (naming the allowed ones), and a member equals, prints and is written as its value."""

from __future__ import annotations

from enum import Enum

CIFAR_SIDE = 32  # pixels a side of a CIFAR image
IMAGE_DIR_SIDE = 64  # pixels a side that dataset=image_dir resizes to without a dataset.resolution


class Choice(str, Enum):
    """A config choice: a str whose value is its name."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Engine(Choice):
    """How a cell's members are fit: all as one batched model, or one nn.Module at a time (the reference)."""

    batched = "batched"
    sequential = "sequential"


class Device(Choice):
    auto = "auto"  # cuda when torch sees one, else cpu
    cpu = "cpu"
    cuda = "cuda"


class Protocol(Choice):
    """independent: the study as stated. chained: the original code's aliasing defect (prefit.schemes)."""

    independent = "independent"
    chained = "chained"


class Split(Choice):
    train = "train"
    test = "test"


class DatasetName(Choice):
    cifair10 = "cifair10"  # the official archive, downloaded once and md5-checked
    cifar_dir = "cifar_dir"  # any folder in the CIFAR-10 python layout
    image_dir = "image_dir"  # any folder of class sub-folders of PNG/JPEG files, at dataset.resolution


# prefit.precision's modes for the matrix products; the functional form, as OmegaConf maps a value to a member by
# name and "3xtf32" is not an identifier.
MatmulPrecision = Choice("MatmulPrecision", {name: name for name in ("highest", "3xtf32", "high")})


class Kernels(Choice):
    """The batched step: auto picks compiled on a CPU and fused on CUDA for a SIREN, generic for other families
    (prefit.engine.batched)."""

    auto = "auto"
    compiled = "compiled"  # numba, CPU
    fused = "fused"  # Triton, CUDA
    torch = "torch"  # plain torch ops, either device (SIREN)
    generic = "generic"  # any family: torch.func (vmap of grad over the members), either device


class Family(Choice):
    """The neural field's family (prefit.model): its activation, initialisation and coordinate encoding."""

    siren = "siren"  # sine activations (Sitzmann et al. 2020)
    ffn = "ffn"  # ReLU on random Fourier features (Tancik et al. 2020)
    gauss = "gauss"  # Gaussian activations (Ramasinghe & Lucey 2022)
