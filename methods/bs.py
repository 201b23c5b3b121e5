"""BS, Boundary Shrinking (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023).

For each forget sample (x, y): x' = x + bound * sign(grad_x CE(f0(x), y)), clamped to [0, 1] (one
FGSM step on the frozen original f0); the new label is f0's prediction on x' (the nearest wrong
class across the boundary); the model is trained with cross-entropy on the ORIGINAL x with that
label, so the forget samples move to their neighbouring class.

Choices where the paper is silent or our protocol differs:
- f0 never changes, so the labels are computed once up front over D_F (on un-augmented images) and
  the model is then fine-tuned on (x, new label) with the usual augmentation. The reference code
  recomputes them per batch on the augmented batch; without augmentation both are identical.
- Because the labels are computed before the first update, the model at that moment IS the frozen
  original: we take input gradients from it (torch.autograd.grad w.r.t. x only, eval mode) instead
  of keeping a deep copy in memory for the whole run.
- If f0 still predicts y on x' (one FGSM step did not cross the boundary), the sample keeps label y,
  as the reference implementation does; how many did is logged.
- x' is not rounded to the 1/255 grid (SalUn's re-implementation rounds it), so it stays inside the
  L_inf ball of radius `bound`.
- With use_retain, each epoch is the pass over D_F followed by one descent pass on D_R (as GA does
  here); the original BS uses D_F only (use_retain: false).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from data.loader import Concat, to_float
from methods.common import UnlearnData
from runner.train import finetune

log = logging.getLogger("methods.bs")


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float) -> torch.Tensor:
    """One L_inf FGSM step of size `bound` on float images in [0, 1]; no parameter gradients."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        # reduction="sum": only the sign is used, and a sum cannot underflow a large batch to zero.
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return (x.detach() + bound * grad.sign()).clamp_(0.0, 1.0)


def shrink_labels(model: torch.nn.Module, x_u8: torch.Tensor, y: torch.Tensor, *, bound: float,
                  batch_size: int) -> torch.Tensor:
    """The frozen model's predictions on the FGSM points of every (x, y), in eval mode and fp32."""
    was_training = model.training
    model.eval()
    labels = []
    try:
        for i in range(0, len(x_u8), batch_size):
            x_adv = fgsm(model, to_float(x_u8[i:i + batch_size]), y[i:i + batch_size], bound)
            with torch.no_grad():
                labels.append(model(x_adv).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(labels)


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int, decay_gamma: float,
            bound: float) -> torch.nn.Module:
    new_y = shrink_labels(model, data.forget_x, data.forget_y, bound=bound, batch_size=batch_size)
    kept = int((new_y == data.forget_y).sum())
    log.info("bs: %d of %d forget samples keep their label (FGSM step of %g did not cross the "
             "boundary)", kept, len(new_y), bound)
    stream = data.stream(data.forget_x, new_y, batch_size)
    if data.retain_x is not None:
        stream = Concat(stream, data.stream(data.retain_x, data.retain_y, batch_size, salt=1))
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="bs")
