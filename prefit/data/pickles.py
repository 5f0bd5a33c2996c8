"""A restricted unpickler for CIFAR batches: it resolves only the globals those files need (arrays, dtypes,
latin-1 bytes), so that a downloaded or user-supplied file cannot run code when it is loaded."""

from __future__ import annotations

import codecs
import os
import pickle
from typing import Any

import numpy as np

from prefit.data.base import DataError

try:  # numpy >= 1.26 has numpy._core (numpy 2 pickles name it); older ones only numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What pickle protocol 2 in Python 3 writes bytes as (`_codecs.encode(s, 'latin1')`), and nothing more:
    other codecs (zlib, bz2, ...) could be used to build decompression bombs."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


# (module, name) -> the object. numpy 1 and Python-2 pickles say numpy.core, numpy 2 ones numpy._core;
# both resolve to the current numpy's functions (numpy 2 warns on numpy.core imports).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): bytes,  # b"" under protocol 2 (an empty array's data)
    ("builtins", "bytes"): bytes,
}
for _ns in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_ns}.multiarray", "_reconstruct")] = _multiarray._reconstruct  # arrays, protocol <= 4
    _ALLOWED_GLOBALS[(f"{_ns}.multiarray", "scalar")] = _multiarray.scalar  # numpy scalars (e.g. int labels)
    _ALLOWED_GLOBALS[(f"{_ns}.numeric", "_frombuffer")] = _numeric._frombuffer  # arrays, protocol 5


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch needs: arrays, dtypes, latin-1 bytes."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle the forbidden global {module}.{name} "
                "(a CIFAR batch holds only arrays, lists, numbers and strings)"
            ) from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle `path` with the restricted unpickler (Python-2 strings stay bytes); DataError if unreadable."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # a truncated or non-pickle file raises anything from EOFError to TypeError
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
