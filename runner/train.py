"""THE training loop. One `fit` trains the original, the retrain oracle and every fine-tuning method.

A batch stream yields `(x, y, sign)`: sign +1 descends on the stream's loss, -1 ascends (gradient
ascent); `data.loader.Concat` chains streams into one epoch. `grad_hook(model)` runs between
backward and the optimizer step (SalUn's saliency mask is one).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger("runner.train")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GradHook = Callable[[torch.nn.Module], None]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
        nesterov: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov)


def make_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int,
                   step_size: int | None = None, gamma: float | None = None):
    """Per-epoch learning-rate schedule: `step` (x gamma every step_size epochs), `cosine`, `constant`."""
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "constant":
        return None
    raise ValueError(f"unknown schedule {name!r}; choose step, cosine or constant")


def fit(model: torch.nn.Module, batches: Iterable, *, epochs: int,
        optimizer: torch.optim.Optimizer, scheduler=None, loss_fn: LossFn = F.cross_entropy,
        grad_hook: GradHook | None = None, precision: str = "fp32",
        desc: str = "train") -> torch.nn.Module:
    """Train `model` in place for `epochs` passes over `batches`; returns the model in eval mode."""
    dtype = PRECISIONS[precision]
    device_type = next(model.parameters()).device.type
    steps = epochs * len(batches)
    # A bar only where someone watches a terminal and the loop is long enough to wait on.
    bar = tqdm(total=steps, desc=desc, leave=False,
               disable=not sys.stderr.isatty() or steps < 200)
    for epoch in range(epochs):
        model.train()
        total = torch.zeros((), device=next(model.parameters()).device)
        for x, y, sign in batches:
            with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            (loss * sign).backward()
            if grad_hook is not None:
                grad_hook(model)
            optimizer.step()
            total += loss.detach().float()
            bar.update()
        if scheduler is not None:
            scheduler.step()
        mean_loss = total.item() / max(len(batches), 1)  # one sync per epoch
        if not math.isfinite(mean_loss):
            log.warning("%s: loss became %s in epoch %d", desc, mean_loss, epoch + 1)
        log.debug("%s epoch %d/%d loss %.4f", desc, epoch + 1, epochs, mean_loss)
    bar.close()
    return model.eval()


def finetune(model: torch.nn.Module, batches: Iterable, *, epochs: int, lr: float,
             momentum: float, weight_decay: float, decay_every: int, decay_gamma: float,
             loss_fn: LossFn = F.cross_entropy, grad_hook: GradHook | None = None,
             precision: str = "fp32", desc: str = "unlearn") -> torch.nn.Module:
    """The unlearning papers' fine-tuning: SGD with momentum, step decay every `decay_every` epochs."""
    opt = sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, name="step", epochs=epochs, step_size=decay_every, gamma=decay_gamma)
    return fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, loss_fn=loss_fn,
               grad_hook=grad_hook, precision=precision, desc=desc)
