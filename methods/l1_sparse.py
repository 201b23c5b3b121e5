"""l1-sparse (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023): fine-tune
the original on D_R with the loss CE + alpha_t * ||theta||_1, which pushes the model towards a
sparse one that forgets more easily.

`alpha_schedule` chooses how alpha_t moves over the run (E epochs, `alpha` at the start):
- `compounding` (the AMUN code, the default): alpha is constant within an epoch, and after epoch
  e (0-based) it is multiplied by (2 - 2e/E). Over 10 epochs that is 1x, 2x, 3.6x, 5.8x, 8.1x,
  9.7x, 9.7x, 7.7x, 4.6x and 1.9x `alpha`: the weight rises, peaks mid-run and falls, averaging
  about 5.4x `alpha`.
- `linear` (the l1-sparse paper's "linear decay"): alpha_t = alpha * (1 - t / T) at optimizer
  step t of T, the per-step version of the SalUn/l1-sparse code's per-epoch line; it averages
  alpha / 2, about a tenth of `compounding`.
The penalty enters as a grad_hook adding alpha_t * sign(theta) (the subgradient of the l1 term,
0 at theta = 0, as autograd's abs gives) to every parameter's gradient, batch-norm affine
parameters included (both codes penalize all of model.parameters()). Added to the gradient before
optimizer.step(), it flows through momentum exactly as the loss term would.
"""

from __future__ import annotations

from typing import Literal

import torch

from methods.common import UnlearnData
from runner.train import GradHook, finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative

AlphaSchedule = Literal["compounding", "linear"]


def alpha_at(step: int, *, alpha: float, steps_per_epoch: int, epochs: int,
             schedule: AlphaSchedule) -> float:
    """alpha_t at optimizer step `step` of a run of `epochs` x `steps_per_epoch` steps; 0 after it."""
    total = epochs * steps_per_epoch
    if step >= total:
        return 0.0
    if schedule == "linear":
        return alpha * (1.0 - step / total)
    if schedule == "compounding":
        for e in range(step // steps_per_epoch):
            alpha *= 2.0 - 2.0 * e / epochs
        return alpha
    raise ValueError(f"l1_sparse: alpha_schedule must be compounding or linear, got {schedule!r}")


def l1_hook(*, alpha: float, steps_per_epoch: int, epochs: int,
            schedule: AlphaSchedule) -> GradHook:
    """A grad_hook adding alpha_t * sign(theta) to each gradient; counts its own calls (one per
    optimizer step) to know t."""
    step = 0

    def hook(model: torch.nn.Module) -> None:
        nonlocal step
        a = alpha_at(step, alpha=alpha, steps_per_epoch=steps_per_epoch, epochs=epochs,
                     schedule=schedule)
        step += 1
        if a == 0.0:
            return
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=a)

    return hook


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma, alpha: NonNegative,
            alpha_schedule: AlphaSchedule) -> torch.nn.Module:
    x, y = data.retain("l1_sparse")
    stream = data.stream(x, y, batch_size)
    hook = l1_hook(alpha=alpha, steps_per_epoch=len(stream), epochs=epochs,
                   schedule=alpha_schedule)
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    grad_hook=hook, precision=data.precision, desc="l1_sparse")


unlearn.needs_retain = True
