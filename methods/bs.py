"""BS, Boundary Shrinking (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023).

For a forget sample (x, y): x' = x + bound * sign(grad_x CE(f(x), y)), clamped to [0, 1] (one FGSM
step on a frozen copy f of the model); the new label is f's prediction on x' (the nearest wrong
class across the boundary); the model is trained with cross-entropy on x with that label, so the
forget samples move to their neighbouring class. If f still predicts y on x' (one step did not
cross the boundary), the sample keeps label y, as the reference code does; how many did is logged.

`labels` chooses where the labels come from:
- `epoch_copy` (the AMUN code, the default): at the start of every epoch's forget pass (after that
  epoch's D_R pass, with use_retain) a fresh frozen copy of the current model is taken, in eval
  mode; each augmented forget batch is labelled by FGSM on that copy, with x' rounded to the 1/255
  grid as the code's `discretize` does. The model is trained on the same augmented batch.
- `original`: the labels are computed once, before the first update, from the original model on
  the un-augmented forget images, with x' not rounded (it stays inside the L_inf ball of radius
  `bound`); the fine-tuning then augments as usual. The reading of the paper in which f is the
  original model and never changes.

With use_retain, each epoch adds one descent pass over D_R (`retain_pass`, methods.common: before
the forget pass in the AMUN code); the original BS uses D_F only (use_retain: false).
"""

from __future__ import annotations

import copy
import logging
from typing import Iterable, Literal

import torch
import torch.nn.functional as F

from data.loader import to_float
from methods.common import RetainPass, UnlearnData, with_retain_pass
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative, Positive

log = logging.getLogger("methods.bs")

LabelSource = Literal["epoch_copy", "original"]


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float, *,
         quantize: bool = False) -> torch.Tensor:
    """One L_inf FGSM step of size `bound` on float images in [0, 1]; no parameter gradients.
    `quantize` rounds the result to the 1/255 grid of 8-bit pixels."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        # reduction="sum": only the sign is used, and a sum cannot underflow a large batch to zero.
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    x_adv = (x.detach() + bound * grad.sign()).clamp_(0.0, 1.0)
    return x_adv.mul_(255.0).round_().div_(255.0) if quantize else x_adv


@torch.no_grad()
def _predict_at_fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float,
                     quantize: bool) -> torch.Tensor:
    return model(fgsm(model, x, y, bound, quantize=quantize)).argmax(1)


def shrink_labels(model: torch.nn.Module, x_u8: torch.Tensor, y: torch.Tensor, *, bound: float,
                  batch_size: int) -> torch.Tensor:
    """The model's predictions at the FGSM points of every (x, y), un-augmented, in eval mode and
    fp32 (`labels: original`)."""
    was_training = model.training
    model.eval()
    try:
        labels = [_predict_at_fgsm(model, to_float(x_u8[i:i + batch_size]), y[i:i + batch_size],
                                   bound, quantize=False) for i in range(0, len(x_u8), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(labels)


class EpochCopyLabels:
    """The forget stream relabelled by a frozen copy of `model` taken when each epoch's pass over
    it starts (`labels: epoch_copy`): every batch, as augmented, gets the copy's predictions at its
    FGSM points (rounded to the 1/255 grid). Counts, per epoch, the samples that kept their label."""

    def __init__(self, stream: Iterable, model: torch.nn.Module, bound: float):
        self.stream, self.model, self.bound = stream, model, bound
        self.kept: list[torch.Tensor] = []  # one count per epoch, on the device (no host sync)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        frozen.zero_grad(set_to_none=True)  # the copy needs none of the last step's gradients
        kept = None
        for x, y, sign in self.stream:
            new_y = _predict_at_fgsm(frozen, x, y, self.bound, quantize=True)
            same = (new_y == y).sum()
            kept = same if kept is None else kept + same
            yield x, new_y, sign
        if kept is not None:
            self.kept.append(kept)


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma, bound: Positive, labels: LabelSource,
            retain_pass: RetainPass) -> torch.nn.Module:
    if labels == "original":
        new_y = shrink_labels(model, data.forget_x, data.forget_y, bound=bound,
                              batch_size=batch_size)
        log.info("bs: %d of %d forget samples keep their label (FGSM step of %g did not cross "
                 "the boundary)", int((new_y == data.forget_y).sum()), len(new_y), bound)
        forget = data.stream(data.forget_x, new_y, batch_size)
    elif labels == "epoch_copy":
        forget = EpochCopyLabels(data.stream(data.forget_x, data.forget_y, batch_size), model,
                                 bound)
    else:
        raise ValueError(f"bs: labels must be epoch_copy or original, got {labels!r}")
    model = finetune(model, with_retain_pass(data, forget, batch_size, retain_pass), epochs=epochs,
                     lr=lr, momentum=momentum, weight_decay=weight_decay, decay_every=decay_every,
                     decay_gamma=decay_gamma, precision=data.precision, desc="bs")
    if labels == "epoch_copy" and forget.kept:
        # kept[epochs - 1]: a clipped model's batch-norm pass after training iterates once more
        log.info("bs: of %d forget samples per epoch, %d kept their label in the first epoch and "
                 "%d in the last (FGSM step of %g did not cross the boundary)", len(data.forget_y),
                 int(forget.kept[0]), int(forget.kept[min(epochs, len(forget.kept)) - 1]), bound)
    return model
