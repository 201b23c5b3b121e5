"""GA, gradient ascent (Thudi et al., 2022): ascend the cross-entropy on D_F. With D_R, each epoch
is an ascent pass on D_F followed by one descent pass on D_R (the AMUN paper's protocol); without
it (`use_retain: false`), ascent alone."""

from __future__ import annotations

import torch

from data.loader import Concat
from methods.common import UnlearnData
from runner.train import finetune


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int,
            decay_gamma: float) -> torch.nn.Module:
    stream = data.stream(data.forget_x, data.forget_y, batch_size, sign=-1.0)
    if data.retain_x is not None:
        stream = Concat(stream, data.stream(data.retain_x, data.retain_y, batch_size, salt=1))
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="ga")
