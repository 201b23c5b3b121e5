"""RL, random labels (Golatkar et al., 2020; as run by SalUn and AMUN): fine-tune on D_R + D_F where
every forget sample gets a fresh uniformly random wrong label each epoch; without D_R
(`use_retain: false`), on D_F alone."""

from __future__ import annotations

import torch

from methods.common import UnlearnData, random_wrong_labels
from runner.train import finetune


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int,
            decay_gamma: float) -> torch.nn.Module:
    x, y = data.forget_x, data.forget_y
    is_forget = torch.ones(len(y), dtype=torch.bool, device=y.device)
    if data.retain_x is not None:
        rx, ry = data.retain_x, data.retain_y
        x, y = torch.cat([rx, x]), torch.cat([ry, y])
        is_forget = torch.cat([torch.zeros(len(ry), dtype=torch.bool, device=y.device), is_forget])
    stream = data.stream(x, y, batch_size, relabel=random_wrong_labels(data.num_classes, is_forget))
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="rl")
