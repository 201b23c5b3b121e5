"""RL, random labels (Golatkar et al., 2020; as run by SalUn and AMUN): fine-tune on D_R + D_F where
every forget sample gets a fresh uniformly random wrong label each epoch; without D_R
(`use_retain: false`), on D_F alone."""

from __future__ import annotations

import torch

from methods.common import UnlearnData, random_label_stream
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma) -> torch.nn.Module:
    stream = random_label_stream(data, batch_size)
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="rl")
