"""Which config keys make a study, and how two configs are compared.

Every config field is a study key unless its metadata marks it `RUNTIME` (how a job runs: threads, caches, device,
chunking; left out of the study and of cell folder names) or `ARITHMETIC` (how the numbers are computed: results
agree to rounding, not bit for bit; the robustness report compares such sweeps). `prefit.config` turns the marks into
`RUNTIME_KEYS` and `ARITHMETIC_KEYS`. `config_diff` compares configs, a null value and an absent key being the same.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

RUNTIME = {"runtime": True}
ARITHMETIC = {"arithmetic": True}
RUNTIME_ARITHMETIC = {**RUNTIME, **ARITHMETIC}


def marked_keys(cls: type, mark: str, prefix: str = "") -> list[str]:
    """Dotted keys of the dataclass fields (nested ones too) whose metadata sets `mark`."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get(mark):
            keys.append(key)
            continue
        for kind in (hints[f.name], *typing.get_args(hints[f.name])):  # X, or the X of `X | None`
            if isinstance(kind, type) and is_dataclass(kind):
                keys += marked_keys(kind, mark, key + ".")
                break
    return keys


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}. Nulls are left out (null and absent are one); an empty section
    stays a value of its own ({}), so a selected section without keys differs from an unselected one."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        elif value is not None:
            flat[name] = value
    return flat


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two nested configs, sorted."""
    left, right = flatten(a), flatten(b)
    return sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))


def without(data: Mapping[str, Any], keys: typing.Iterable[str]) -> dict[str, Any]:
    """A deep copy of a nested config (plain data) less the dotted `keys`."""
    copy: dict[str, Any] = {k: without(v, ()) if isinstance(v, Mapping) else v for k, v in data.items()}
    for key in keys:
        *parents, leaf = key.split(".")
        node: Any = copy
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return copy
