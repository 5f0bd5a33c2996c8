"""The triples of the study (a target, an image of its class, an image of another class) and disjoint pools, drawn
from labels alone, for any number of classes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from prefit.data.base import DataError


@dataclass(frozen=True)
class Triple:
    """One row of the study: a target A, an image of A's class and an image of another class."""

    triple: int  # 0..n-1
    target: int  # index of A in the ImageSet
    same: int  # another image of A's class
    other: int  # an image of another class


def max_triples(labels: np.ndarray) -> int:
    """The most triples with all images distinct that these labels allow. With t_c triples whose A is of class c and o_c
    other images from c, T triples exist iff 2 t_c + o_c <= n_c, t_c + o_c <= T, sum t = sum o = T; for a given T the
    t_c leaving the most room for o are found greedily (the room is concave in t_c)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=1)

    def feasible(total: int) -> bool:
        pairs = counts // 2
        if pairs.sum() < total:
            return False
        room = np.minimum(counts, total)  # o_c with t_c = 0
        cheap = np.clip(counts - total, 0, pairs)  # t_c units that cost o_c one each; the rest cost two
        used_cheap = min(total, int(cheap.sum()))
        return int(room.sum()) - used_cheap - 2 * (total - used_cheap) >= total

    lo, hi = 0, int(counts.sum()) // 3
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid - 1)
    return lo


def draw_triples(labels: np.ndarray, n: int, seed: int) -> list[Triple]:
    """Draw n triples in which no image appears twice. Walk one permutation of all images (default_rng(seed)): each
    unused image whose class has another unused image becomes an A, its same-class image the next unused one of its
    class in the walk, its other image the next unused one of a class drawn uniformly among the other classes with
    unused images. Nothing depends on n: the first k triples are the same for any n >= k."""
    labels = np.asarray(labels, dtype=np.int64)
    if n < 0:
        raise DataError(f"the number of triples must be >= 0, got {n}")
    classes = np.unique(labels)
    if n > 0 and classes.size < 2:
        raise DataError(
            f"asked for {n} triples but {labels.shape[0]} images of {classes.size} class(es) allow at most 0: "
            "a triple needs an image of another class, so the images must span at least 2 classes"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.shape[0])
    queues = {int(c): order[labels[order] == c].tolist() for c in classes}  # each class, in walk order
    heads = dict.fromkeys(queues, 0)
    left = {c: len(q) for c, q in queues.items()}
    used = np.zeros(labels.shape[0], dtype=bool)

    def take(c: int) -> int:
        q = queues[c]
        while used[q[heads[c]]]:
            heads[c] += 1
        i = q[heads[c]]
        used[i] = True
        left[c] -= 1
        return i

    triples: list[Triple] = []
    walk = iter(order)
    while len(triples) < n:
        a = next((int(i) for i in walk if not used[i] and left[int(labels[i])] >= 2), None)
        if a is None:
            break
        c = int(labels[a])
        others = [k for k in queues if k != c and left[k] > 0]
        if not others:
            break
        used[a] = True
        left[c] -= 1
        same = take(c)
        other = take(others[int(rng.integers(len(others)))])
        triples.append(Triple(triple=len(triples), target=a, same=same, other=other))
    if len(triples) < n:
        most = max_triples(labels)
        counts = ", ".join(str(int(k)) for k in np.bincount(labels))
        detail = f" (this seed's draw stopped at {len(triples)})" if len(triples) < most else ""
        raise DataError(
            f"asked for {n} triples but {labels.shape[0]} images (per class: {counts}) allow at most {most} "
            f"with no image used twice{detail}; lower dataset.n_triples"
        )
    return triples


def draw_pool(labels: np.ndarray, n: int, seed: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """n distinct indices (int64, shuffled, deterministic) outside `exclude`, as balanced over classes as possible."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    excluded = np.zeros(labels.shape[0], dtype=bool)
    drop = np.fromiter((int(i) for i in exclude), dtype=np.int64)
    if drop.size and (drop.min() < 0 or drop.max() >= labels.shape[0]):
        raise DataError(f"draw_pool: exclude holds indices outside 0..{labels.shape[0] - 1}")
    excluded[drop] = True
    free = np.flatnonzero(~excluded)
    if n < 0 or n > free.size:
        raise DataError(f"asked for a pool of {n} images but only {free.size} images are outside the triples")
    by_class = [rng.permutation(free[labels[free] == c]) for c in np.unique(labels[free])]
    quota = np.zeros(len(by_class), dtype=np.int64)
    room = np.array([len(x) for x in by_class], dtype=np.int64)
    while quota.sum() < n:  # fill level by level; the classes that get one more at the last level are drawn
        open_ = np.flatnonzero(quota < room)
        need = n - int(quota.sum())
        if need < open_.size:
            open_ = rng.choice(open_, size=need, replace=False)
        quota[open_] += 1
    picked = np.concatenate([x[:q] for x, q in zip(by_class, quota, strict=True)]) if by_class else free[:0]
    return rng.permutation(picked).astype(np.int64)
