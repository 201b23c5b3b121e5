"""Layers and argument checks shared by every model in this package.

Every model takes raw images in [0, 1] and normalizes them in its first
layer (:class:`Normalize`), so that adversarial attacks, clipping and
perturbation budgets all operate in pixel space, not in normalized space.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _as_float_list(values: Sequence[float], name: str) -> list[float]:
    """Turn a sequence (tuple, list, OmegaConf ListConfig, tensor) into floats.

    Hydra hands over ``ListConfig`` objects, which ``torch.as_tensor`` does
    not accept, hence the explicit conversion.
    """
    try:
        out = [float(v) for v in values]
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from err
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module.

    ``mean`` and ``std`` are stored as buffers of shape (1, C, 1, 1): they
    follow ``.to(device)`` / ``.half()`` and are saved in the state_dict, so a
    checkpoint carries its own normalization.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_l = _as_float_list(mean, "mean")
        std_l = _as_float_list(std, "std")
        if len(mean_l) != len(std_l):
            raise ValueError(f"mean has {len(mean_l)} entries but std has {len(std_l)}")
        if any(s <= 0 for s in std_l):
            raise ValueError(f"std must be positive, got {std_l}")
        self.register_buffer("mean", torch.tensor(mean_l).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l).reshape(1, -1, 1, 1))

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def check_model_args(num_classes: int, in_channels: int, image_size: int) -> None:
    """Validate the size arguments common to every model constructor."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                        ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def make_normalize(in_channels: int, mean: Sequence[float], std: Sequence[float]) -> Normalize:
    """Build the input :class:`Normalize`, checking it matches ``in_channels``."""
    norm = Normalize(mean, std)
    if norm.num_channels != in_channels:
        raise ValueError(
            f"mean/std have {norm.num_channels} entries but in_channels={in_channels}"
        )
    return norm


def norm2d(channels: int, batch_norm: bool) -> nn.Module:
    """BatchNorm2d, or Identity when a model is built without normalization."""
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
