"""SSD, Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024).

No gradient step. Two diagonal Fisher importances of every parameter, each the mean over its
batches of the squared gradient of the batch's mean cross-entropy (the SSD code's
`calc_importance`):
  []_D  on the whole training set D = D_R + D_F (the method's only use of the retain data),
  []_F  on the forget set D_F.
Every parameter entry with []_F > alpha * []_D is multiplied by
  beta = min(lambda * []_D / []_F, 1),
so it is dampened, never scaled up; every other entry stays bit-identical. Buffers (batch-norm
statistics) are untouched.

Defaults (conf/method/ssd.yaml): alpha (the code's `selection_weighting`) = 10 and lambda
(`dampening_constant`) = 1, the paper's ResNet-18 values. Choices where the paper is silent or
where the runner differs: the importances are computed in fp32 with the model in eval mode (batch
norm uses its running statistics, so the importances do not depend on the batch composition) on
un-augmented images (`augment: true` draws the run's augmentation once per batch instead); the
batch size is configurable (the SSD code uses its loaders' batch size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.loader import Batches
from methods.common import UnlearnData
from runner.typed import BatchSize, Positive


def importances(model: torch.nn.Module, batches, n_batches: int) -> dict[str, torch.Tensor]:
    """Per parameter: the mean over `batches` of the squared gradient of the batch's mean
    cross-entropy (a diagonal Fisher estimate)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for x, y, _ in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).float(), y).backward()
        for n, p in params.items():
            if p.grad is not None:
                total[n] += p.grad.detach().float().square()
    model.zero_grad(set_to_none=True)
    return {n: t / max(n_batches, 1) for n, t in total.items()}


@torch.no_grad()
def dampen(model: torch.nn.Module, forget_imp: dict[str, torch.Tensor],
           global_imp: dict[str, torch.Tensor], *, alpha: float, lam: float) -> dict[str, int]:
    """Multiply the entries with forget_imp > alpha * global_imp by min(lam * global / forget, 1),
    in place; returns, per parameter, how many entries were selected."""
    selected = {}
    for n, p in model.named_parameters():
        if n not in forget_imp:
            continue
        f, g = forget_imp[n], global_imp[n]
        chosen = f > alpha * g  # f > 0 wherever chosen (g >= 0), so the ratio below is finite
        factor = torch.where(chosen, (lam * g / torch.where(chosen, f, 1.0)).clamp(max=1.0), 1.0)
        p.mul_(factor.to(p.dtype))  # x * 1.0 == x exactly: the others stay bit-identical
        selected[n] = int(chosen.sum())
    return selected


def unlearn(model: torch.nn.Module, data: UnlearnData, *, alpha: Positive, lam: Positive,
            batch_size: BatchSize, augment: bool) -> torch.nn.Module:
    retain_x, retain_y = data.retain("ssd")
    aug = data.augment if augment else None

    def stream(x, y, salt):
        return Batches(x, y, batch_size=batch_size, shuffle=False, seed=data.seed * 1000 + salt,
                       augment=aug, channels_last=data.channels_last)

    model.eval()
    forget = stream(data.forget_x, data.forget_y, 0)
    forget_imp = importances(model, forget, len(forget))
    # D = D_R + D_F: the whole training set, as the SSD code's full train loader.
    whole = stream(torch.cat([retain_x, data.forget_x]), torch.cat([retain_y, data.forget_y]), 1)
    global_imp = importances(model, whole, len(whole))
    dampen(model, forget_imp, global_imp, alpha=alpha, lam=lam)
    return model


unlearn.needs_retain = True
