"""FT: fine-tune the original on D_R only (Warnecke et al., 2023; the AMUN paper's protocol:
SGD with momentum, weight decay and step decay)."""

from __future__ import annotations

import torch

from methods.common import UnlearnData
from runner.train import finetune


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int,
            decay_gamma: float) -> torch.nn.Module:
    x, y = data.retain("ft")
    return finetune(model, data.stream(x, y, batch_size), epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="ft")


unlearn.needs_retain = True
