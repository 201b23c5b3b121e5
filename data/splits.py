"""Forget / retain splits of a training set.

Random forget sets reproduce the papers' code exactly: `np.random.seed(s);
np.random.choice(N, n, replace=False)` (AMUN, SalUn). Class forget sets take every training
sample of one class. An `indices` forget set is the one a file lists (`read_indices`), in its
order (requests take consecutive chunks of it, as of a random set's draw). Every split is a pure function of its spec and the labels, so the same spec
always gives the same indices; the indices' hash goes into the cache keys downstream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING

from runner.typed import Seed


class SplitError(ValueError):
    """A forget spec that cannot describe a subset of this training set."""


@dataclass(frozen=True)
class Split:
    """Indices into the training set. `forget_idx` keeps the sampler's order; `retain_idx` is sorted."""

    kind: str  # "random", "class" or "indices"
    forget_idx: np.ndarray  # int64
    retain_idx: np.ndarray  # int64, sorted, the complement of forget_idx
    class_id: int | None = None

    def digest(self, which: str = "retain") -> str:
        """`index_digest` of the retain or forget indices."""
        return index_digest(self.retain_idx if which == "retain" else self.forget_idx)


def forgets_class(spec) -> bool:
    """Whether a forget spec forgets a whole class (forget=class)."""
    return spec.get("kind") == "class"


def describe(spec) -> str:
    """A forget spec in a table's words: `class 3`, `10%` or `n=500`."""
    if forgets_class(spec):
        return f"class {spec.get('class_id')}"
    if spec.get("kind") == "indices":
        return f"indices {Path(str(spec.get('path'))).name}"
    if spec.get("fraction") is not None:
        return f"{spec['fraction'] * 100:g}%"
    return f"n={spec.get('count')}"


def index_digest(idx: np.ndarray) -> str:
    """sha256 of a set of indices (order-free): identifies a training subset in cache keys."""
    return hashlib.sha256(np.sort(np.asarray(idx)).astype(np.int64).tobytes()).hexdigest()


def ordered_digest(idx: np.ndarray) -> str:
    """sha256 of a sequence of indices in its order: for what depends on the order (a forget
    set's batches and subsamples, its attack pool)."""
    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class ForgetSpec:
    """The `forget` config group's schema (runner.typed): `random` takes fraction or count and
    seed, `class` takes class_id (checked against the dataset by `check_spec`), `indices` the
    path of a file listing them (`read_indices`)."""

    kind: str = MISSING
    fraction: Optional[float] = None
    count: Optional[int] = None
    seed: Optional[Seed] = None
    class_id: Optional[int] = None
    path: Optional[str] = None


INDEX_FILES = (".npy", ".csv", ".txt")


def read_indices(path) -> np.ndarray:
    """The forget indices a file lists, in its order, as int64: a .npy array of integers, a .txt
    of integers separated by white space, or a .csv with one column (a header line allowed).
    SplitError (naming forget.path) when the file is missing, of another kind, empty, or holds a
    non-integer, a negative or a repeated index."""
    where = f"forget.path={path}"
    path = Path(str(path)).expanduser()
    if path.suffix not in INDEX_FILES:
        raise SplitError(f"{where}: the file must be {', '.join(INDEX_FILES)}")
    if not path.is_file():
        raise SplitError(f"{where}: no such file")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise SplitError(f"{where}: not a readable .npy array ({err})") from None
        if values.dtype.kind not in "iu":
            raise SplitError(f"{where}: holds {values.dtype} values; indices must be integers")
        words = None
    else:
        lines = path.read_text().splitlines()
        if path.suffix == ".csv":
            rows = [line.split(",") for line in lines if line.strip()]
            if any(len(row) != 1 for row in rows):
                raise SplitError(f"{where}: the .csv must have one column")
            words = [row[0].strip() for row in rows]
            if words and not _is_int(words[0]):
                words = words[1:]  # a header
        else:
            words = " ".join(lines).split()
        bad = next((w for w in words if not _is_int(w)), None)
        if bad is not None:
            raise SplitError(f"{where}: {bad!r} is not an integer index")
        values = np.array([int(w) for w in words], dtype=np.int64)
    values = np.asarray(values).astype(np.int64).ravel()
    if len(values) == 0:
        raise SplitError(f"{where}: the file lists no index")
    if values.min() < 0:
        raise SplitError(f"{where}: index {values.min()} is negative")
    unique, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():
        raise SplitError(f"{where}: index {unique[counts > 1][0]} is listed "
                         f"{counts[counts > 1][0]} times")
    return values


def _is_int(word: str) -> bool:
    return word.lstrip("+-").isdigit()


def check_spec(spec, num_classes: int) -> None:
    """The checks a forget spec allows before any data is loaded (SplitError if it fails)."""
    kind = spec.get("kind")
    if kind == "random":
        _check_size(spec.get("fraction"), spec.get("count"))
        if not isinstance(spec.get("seed"), int):
            raise SplitError(f"forget.seed must be an integer, got {spec.get('seed')!r}")
    elif kind == "class":
        class_id = spec.get("class_id")
        if class_id is None or not 0 <= class_id < num_classes:
            raise SplitError(f"forget.class_id must lie in [0, {num_classes - 1}], got {class_id}")
    elif kind == "indices":
        if not isinstance(spec.get("path"), str) or not spec.get("path"):
            raise SplitError("forget=indices needs forget.path=FILE (.npy, .csv or .txt)")
        read_indices(spec.get("path"))
    else:
        raise SplitError(f"unknown forget.kind {kind!r}; choose 'random', 'class' or 'indices'")


def _check_size(fraction: float | None, count: int | None) -> None:
    if (fraction is None) == (count is None):
        raise SplitError("give exactly one of forget.fraction and forget.count "
                         f"(got fraction={fraction}, count={count})")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise SplitError(f"forget.fraction must lie in (0, 1), got {fraction}")
    if count is not None and count < 1:
        raise SplitError(f"forget.count must be positive, got {count}")


def random_forget(n_train: int, *, seed: int, fraction: float | None = None,
                  count: int | None = None) -> Split:
    """Forget `count` (or `round(fraction * n_train)`) samples drawn as the papers' code draws them."""
    _check_size(fraction, count)
    if count is None:
        count = int(round(fraction * n_train))
    if not 0 < count < n_train:
        raise SplitError(f"forget.count must lie in [1, {n_train - 1}] for a training set of "
                         f"{n_train} samples, got {count}")
    # RandomState(s).choice draws exactly what np.random.seed(s); np.random.choice(...) draws,
    # without touching numpy's global state.
    forget = np.random.RandomState(seed).choice(n_train, count, replace=False).astype(np.int64)
    return Split("random", forget, _complement(n_train, forget))


def class_forget(train_y: np.ndarray, class_id: int, num_classes: int) -> Split:
    """Forget every training sample of `class_id`."""
    check_spec({"kind": "class", "class_id": class_id}, num_classes)
    train_y = np.asarray(train_y)
    forget = np.flatnonzero(train_y == class_id).astype(np.int64)
    if len(forget) == 0:
        raise SplitError(f"class {class_id} has no training samples")
    return Split("class", forget, _complement(len(train_y), forget), class_id=class_id)


def make_split(spec, train_y: np.ndarray, num_classes: int) -> Split:
    """Build the split a `forget` config describes (kind random: fraction|count, seed; kind class: class_id)."""
    check_spec(spec, num_classes)
    if spec.kind == "random":
        return random_forget(len(train_y), seed=spec.seed, fraction=spec.get("fraction"),
                             count=spec.get("count"))
    if spec.kind == "indices":
        return indices_forget(len(train_y), read_indices(spec.path), spec.path)
    return class_forget(train_y, spec.class_id, num_classes)


def indices_forget(n_train: int, forget: np.ndarray, path) -> Split:
    """Forget the listed training samples (`read_indices`), in the list's order."""
    if forget.max() >= n_train:
        raise SplitError(f"forget.path={path}: index {forget.max()} is out of range for a "
                         f"training set of {n_train} samples")
    if len(forget) >= n_train:
        raise SplitError(f"forget.path={path}: lists all {n_train} training samples; D_R would "
                         "be empty")
    return Split("indices", forget, _complement(n_train, forget))


def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    return np.flatnonzero(mask).astype(np.int64)


def keep_matrix(num_models: int, population: int, seed: int = 0) -> np.ndarray:
    """(num_models, population) bool: which population samples reference model m trains on. Each
    sample is IN for exactly num_models / 2 models (RMIA's and LiRA's code):
    `np.random.seed(seed); keep = np.random.uniform(0, 1, (M, P)); keep.argsort(0) < M / 2`."""
    if num_models < 2 or num_models % 2:
        raise SplitError(f"reference models: need an even number >= 2, got {num_models}")
    rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed)
    return rng.uniform(0, 1, (num_models, population)).argsort(0) < num_models / 2


def balanced_indices(y: np.ndarray, n: int, num_classes: int, seed: int, *, what: str) -> np.ndarray:
    """Sorted indices of n samples of labels y, n / num_classes from each class, drawn with
    `np.random.RandomState(seed)`; `what` names the split in errors."""
    if n < num_classes or n % num_classes:
        raise ValueError(f"subset.{what}={n}: must be a positive multiple of the "
                         f"{num_classes} classes (the subset is class-balanced)")
    per_class, rng, chosen = n // num_classes, np.random.RandomState(seed), []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"subset.{what}={n} needs {per_class} images of class {c}; the "
                             f"{what} split has {len(members)}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))
