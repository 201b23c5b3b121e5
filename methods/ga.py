"""GA, gradient ascent (Thudi et al., 2022): ascend the cross-entropy on D_F. Without D_R
(`use_retain: false`), ascent alone. With D_R, each epoch adds one descent pass over D_R:
`retain_pass: before` (the AMUN code's protocol, the default) runs it before the ascent pass, so
every epoch ends on the forget update; `after` runs it after, so every epoch ends on the repair.
The AMUN code iterates D_R in a fixed order (its retain loader does not shuffle); ours reshuffles
it every epoch, like every other stream here."""

from __future__ import annotations

import torch

from methods.common import RetainPass, UnlearnData, with_retain_pass
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma,
            retain_pass: RetainPass) -> torch.nn.Module:
    ascent = data.stream(data.forget_x, data.forget_y, batch_size, sign=-1.0)
    return finetune(model, with_retain_pass(data, ascent, batch_size, retain_pass), epochs=epochs,
                    lr=lr, momentum=momentum, weight_decay=weight_decay, decay_every=decay_every,
                    decay_gamma=decay_gamma, precision=data.precision, desc="ga")
