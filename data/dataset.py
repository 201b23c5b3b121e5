"""The decoded dataset: uint8 image tensors and int64 labels for both splits, with a content
fingerprint that names it in cache keys (`data.datasets.load` builds it)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING

from runner.typed import Seed

from .splits import balanced_indices


# The `dataset` config group's schema (runner.typed). Every field is required: the YAML is the
# only source of values, and a key deleted from it fails validation instead of being filled.
@dataclass
class AugmentSpec:
    """data.loader.Augment, as the config gives it."""

    crop_pad: int = MISSING
    flip: bool = MISSING
    pad_mode: str = MISSING

    def __post_init__(self) -> None:
        if self.crop_pad < 0:
            raise ValueError(f"dataset.augment.crop_pad must be >= 0, got {self.crop_pad}")
        if self.pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"dataset.augment.pad_mode must be zeros or reflect, got "
                             f"{self.pad_mode!r}")


@dataclass
class SubsetSpec:
    """A class-balanced subset of each split (null: the whole split)."""

    train: Optional[int] = MISSING
    test: Optional[int] = MISSING
    seed: Seed = MISSING


@dataclass
class DatasetSpec:
    name: str = MISSING
    source: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    options: dict = field(default_factory=dict)
    channels: int = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING
    mean: list = MISSING
    std: list = MISSING
    augment: AugmentSpec = MISSING
    subset: SubsetSpec = MISSING

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"dataset.mean/std need {self.channels} values (one per channel)")
        for split in ("train", "test"):
            n = getattr(self.subset, split)
            if n is not None and (n < self.num_classes or n % self.num_classes):
                raise ValueError(f"dataset.subset.{split}={n}: must be a positive multiple of "
                                 f"the {self.num_classes} classes (the subset is class-balanced)")
        if self.augment.pad_mode == "reflect" and self.augment.crop_pad >= self.image_size:
            raise ValueError(f"dataset.augment: reflect padding needs crop_pad < image_size "
                             f"({self.image_size}), got {self.augment.crop_pad}")


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==; compare fingerprints
class Dataset:
    """A fully decoded dataset: uint8 images (N, C, H, W) and int64 labels for both splits.

    ``fingerprint`` is a sha256 over the dtypes, shapes and bytes of the four tensors, so two
    datasets with the same fingerprint hold identical data.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y),
                            ("test", self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.ndim != 4 or not x.is_contiguous():
                raise ValueError(f"{split}_x: {x.dtype} {tuple(x.shape)}, expected contiguous "
                                 "uint8 (N, C, H, W)")
            if y.dtype != torch.int64 or tuple(y.shape) != (x.shape[0],) or (
                    y.numel() and not 0 <= int(y.min()) <= int(y.max()) < len(self.classes)):
                raise ValueError(f"{split}_y: expected int64 ({x.shape[0]},) with ids in "
                                 f"[0, {len(self.classes)})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError("train and test images differ in shape")
        # One layout whatever the source: a one-channel (N, 1, H, W) tensor decoded from (N, H, W,
        # 1) is contiguous with strides (H*W, 1, W, 1), which torch also reads as channels_last,
        # so convolutions took another kernel (and other last bits) than on the same images
        # loaded from the dataset cache, with strides (H*W, H*W, W, 1).
        for name in ("train_x", "test_x"):
            x = getattr(self, name)
            if x.stride() != _standard_strides(x.shape):
                object.__setattr__(self, name, x.clone(memory_format=torch.contiguous_format))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @functools.cached_property
    def population(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Train then test, as one (images, labels) pair: the population that membership
        attacks' reference models are drawn from. Built once per Dataset object."""
        return torch.cat([self.train_x, self.test_x]), torch.cat([self.train_y, self.test_y])

    def to(self, device: torch.device | str) -> "Dataset":
        """The same data on `device` (same fingerprint)."""
        return Dataset(self.name, self.train_x.to(device), self.train_y.to(device),
                       self.test_x.to(device), self.test_y.to(device), self.classes,
                       self.fingerprint)

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> "Dataset":
        """A class-balanced random subset (`splits.balanced_indices`): `train` (`test`) images,
        the same number from every class, kept in their original order; None keeps a split whole.
        The fingerprint is the subset's own, so models trained on different subsets never share a
        cache entry."""
        if train is None and test is None:
            return self
        tensors = []
        for split, n, x, y in (("train", train, self.train_x, self.train_y),
                               ("test", test, self.test_x, self.test_y)):
            if n is not None:
                idx = balanced_indices(y.cpu().numpy(), n, self.num_classes, seed, what=split)
                idx = torch.as_tensor(idx, device=x.device)
                x, y = x[idx].contiguous(), y[idx]
            tensors += [x, y]
        return Dataset(self.name, *tensors, classes=self.classes,
                       fingerprint=fingerprint_of(*(t.cpu() for t in tensors)))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
                f"shape={self.shape}, classes={self.num_classes}, "
                f"fingerprint={self.fingerprint[:12]}...)")


def _standard_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def fingerprint_of(train_x: torch.Tensor, train_y: torch.Tensor,
                   test_x: torch.Tensor, test_y: torch.Tensor) -> str:
    """sha256 hex over the four tensors' tags, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tag, tensor in (("train_x", train_x), ("train_y", train_y),
                        ("test_x", test_x), ("test_y", test_y)):
        array = np.ascontiguousarray(tensor.numpy())
        digest.update(f"{tag}:{array.dtype.str}:{list(array.shape)};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
