"""EU-k, exact unlearning of the last k layers (Goel et al., 2022; see methods/cf_k.py for the
layers and the recipe): the last k Conv and Linear layers are re-initialized, then trained on D_R
with the rest of the model frozen. The batch-norm layers among them train but keep their values
at the start, as in the Goel code (which re-initializes Conv and Linear only).

Re-initialization: each layer's own default (PyTorch's `reset_parameters`, how our models are
initialized before training; the Goel code re-runs its models' initialization, Kaiming-normal
with zero biases), from the run's seeded generator. The default epochs are the original's training
length (`${train.epochs}`), as the Goel code retrains them for its original's epochs.
"""

from __future__ import annotations

from torch import nn

from methods.cf_k import check_k, last_layers, retrain_last
from methods.common import UnlearnData, reinitialize
from runner.typed import BatchSize, Count, Epochs, LR, Momentum, NonNegative, Positive


def unlearn(model: nn.Module, data: UnlearnData, *, k: Count, epochs: Epochs, lr: LR,
            min_lr: NonNegative, momentum: Momentum, weight_decay: NonNegative,
            batch_size: BatchSize, clip_norm: Positive | None) -> nn.Module:
    counted, norms = last_layers(model, k)
    modules = dict(model.named_modules())
    for name in counted:
        reinitialize(modules[name])
    return retrain_last(model, data, counted + norms, epochs=epochs, lr=lr, min_lr=min_lr,
                        momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                        clip_norm=clip_norm, desc="eu_k")


unlearn.needs_retain = True
unlearn.check = check_k
