"""NegGrad+ (Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine
Unlearning", NeurIPS 2023): fine-tuning on joint batches, one retain batch and one forget batch per
step, descending
  alpha * CE(model(x_r), y_r) - (1 - alpha) * CE(model(x_f), y_f).
The two batches go through the model in two forward passes (batch norm sees each on its own, as
in the SCRUB code). At alpha = 1 the forget pass is skipped, so the method is FT on the same retain
stream.

An epoch is one pass over D_R, as in the SCRUB code's `zip(train_loader, cycle(delete_loader))`
(`train_negrad`); the forget stream restarts whenever it runs out. There `itertools.cycle`
replays the forget loader's first pass (same order, same augmentation) for the rest of the epoch;
here each restart is a fresh shuffle and augmentation (chosen: the runner's streams all draw
anew). Defaults (conf/method/neggrad_plus.yaml): the SCRUB code's large-scale CIFAR-10 notebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.loader import Zip
from methods.common import UnlearnData
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, Fraction, LR, Momentum, NonNegative


def unlearn(model: torch.nn.Module, data: UnlearnData, *, alpha: Fraction, epochs: Epochs,
            lr: LR, momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            forget_batch_size: BatchSize, decay_every: Epochs,
            decay_gamma: DecayGamma) -> torch.nn.Module:
    retain_x, retain_y = data.retain("neggrad_plus")
    retain = data.stream(retain_x, retain_y, batch_size)  # FT's stream: salt 0
    forget = data.stream(data.forget_x, data.forget_y, forget_batch_size, salt=1)

    def loss(model: torch.nn.Module, x, y) -> torch.Tensor:
        (x_r, x_f), (y_r, y_f) = x, y
        value = alpha * F.cross_entropy(model(x_r), y_r)
        if alpha < 1:
            value = value - (1 - alpha) * F.cross_entropy(model(x_f), y_f)
        return value

    return finetune(model, Zip(retain, forget),
                    epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    decay_every=decay_every, decay_gamma=decay_gamma, loss=loss,
                    precision=data.precision, desc="neggrad_plus")


unlearn.needs_retain = True
