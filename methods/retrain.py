"""Retrain: train from scratch on D_R with the original's recipe (the exact-unlearning oracle).

The runner's oracle is exactly this computation with the same seed and cache key, so the method
returns that cached model rather than training a second, identical one.
"""

from __future__ import annotations

import torch

from methods.common import UnlearnData


def unlearn(model: torch.nn.Module, data: UnlearnData) -> torch.nn.Module:
    data.retain("retrain")  # an oracle without D_R is no oracle: fail clearly
    return data.train_from_scratch()


unlearn.needs_retain = True
