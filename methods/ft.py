"""FT: fine-tune the original on D_R only (Warnecke et al., 2023; the AMUN paper's protocol:
SGD with momentum, weight decay and step decay)."""

from __future__ import annotations

import torch

from methods.common import UnlearnData
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma) -> torch.nn.Module:
    x, y = data.retain("ft")
    return finetune(model, data.stream(x, y, batch_size), epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="ft")


unlearn.needs_retain = True
