"""THE training loop. One `fit` trains the original, the retrain oracle and every fine-tuning method.

A batch stream yields `(x, y, sign)`: sign +1 descends on the stream's loss, -1 ascends (gradient
ascent); `data.loader.Concat` chains streams into one epoch. The loss is a function of
`(model, x, y)`; everything else a training does (schedules, gradient masks, airbench's EMA and
bias freeze, FastClip) is a hook in `runner.hooks`.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from contextlib import nullcontext
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.loader import Batches, to_float
from runner.checkpoint import TrainCheckpoint
from runner.curves import current
from runner.hooks import Clip, FreezeAfter, GradHook, Hook, Lookahead, Schedule
from runner.optim import sgd
from runner.recipe import make_scheduler

log = logging.getLogger("runner.train")

Loss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class Diverged(ValueError):
    """Training produced a non-finite loss or weights (typically: the learning rate is too high).
    Such a model is never cached or evaluated."""


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Raise Diverged if any floating-point weight or buffer of `model` is NaN or inf."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise Diverged(f"{what}: non-finite values in {bad[0]}"
                       f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}; a lower "
                       "learning rate may train")


def cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss of `fit`: the model's cross-entropy on the batch."""
    return F.cross_entropy(model(x), y)


def on_logits(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Loss:
    """A `fit` loss from a criterion of (logits, labels)."""
    return lambda model, x, y: criterion(model(x), y)


def fit(model: torch.nn.Module, batches: Iterable, *, epochs: int,
        optimizer: torch.optim.Optimizer, hooks: Sequence[Hook] = (), scheduler=None,
        grad_hook: Callable[[torch.nn.Module], None] | None = None, loss: Loss = cross_entropy,
        precision: str = "fp32", desc: str = "train",
        checkpoint: TrainCheckpoint | None = None) -> torch.nn.Module:
    """Train `model` in place for `epochs` passes over `batches`; returns the model in eval mode.

    Each step: `loss(model, x, y)` (under autocast at `precision`) times the batch's sign,
    backward, the hooks' `after_backward`, the optimizer's step, the hooks' `after_step`
    (runner.hooks). `scheduler` and `grad_hook` are short for the hooks `Schedule(scheduler)` and
    `GradHook(grad_hook)`; a model that carries FastClip gets its `Clip` hook. With `checkpoint`
    (batches must be one `Batches` stream), training resumes from its saved state, if any, and
    saves its state as it goes (runner.checkpoint)."""
    dtype = PRECISIONS[precision]
    device = next(model.parameters()).device
    hooks = [*([Schedule(scheduler)] if scheduler is not None else []),
             *([GradHook(grad_hook)] if grad_hook is not None else []), *hooks,
             *Clip.of(model, functools.partial(recompute_batch_norm, dtype=dtype))]
    start_epoch, done = 0, 0  # where a resumed run picks up: its epoch, and steps done in it
    if checkpoint is not None:
        start_epoch, done = checkpoint.resume(model, optimizer, hooks, batches)
    steps = start_epoch * len(batches) + done  # optimizer steps done (a checkpoint: one stream)
    # A bar only where someone watches a terminal and the loop is long enough to wait on.
    bar = tqdm(total=epochs * len(batches), initial=steps, desc=desc, leave=False,
               disable=not sys.stderr.isatty() or epochs * len(batches) < 200)
    curves = current()
    curve = curves.start(desc) if curves is not None else None
    # The accuracy of a curve: the model's last output on each batch (the loss's forward pass).
    last: list = [None]
    watch = (model.register_forward_hook(lambda m, i, out: last.__setitem__(0, out))
             if curve is not None else None)
    with checkpoint.catching_signals() if checkpoint is not None else nullcontext():
        for epoch in range(start_epoch, epochs):
            model.train()
            total = torch.zeros((), device=device)
            correct, seen = torch.zeros((), device=device), torch.zeros((), device=device)
            if checkpoint is not None:
                checkpoint.epoch_start(batches)
            for step, (x, y, sign) in enumerate(batches, 1):
                if step <= done:  # replays the resumed epoch's draws up to the checkpoint
                    if step == done:
                        total += checkpoint.loss_total.to(device)
                        checkpoint.restore_global_rng(device)
                    continue
                with torch.autocast(device.type, dtype=dtype or torch.float32,
                                    enabled=dtype is not None):
                    value = loss(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                (value * sign).backward()
                for hook in hooks:
                    hook.after_backward(model, steps)
                optimizer.step()
                steps += 1
                for hook in hooks:
                    hook.after_step(model, steps)
                total += value.detach().float()
                out, last[0] = last[0], None
                if (torch.is_tensor(out) and torch.is_tensor(y) and out.dim() == 2
                        and len(out) == len(y) and y.dim() in (1, 2)):
                    # soft labels (TRW's targets, (n, C)): accuracy against their argmax; a
                    # label outside the classes (a method's marker of a forget sample: SCRUB's
                    # -1, Bad Teacher's y + C) is not counted
                    labels = y if y.dim() == 1 else y.argmax(1)
                    valid = (labels >= 0) & (labels < out.shape[1])
                    correct += ((out.detach().argmax(1) == labels) & valid).sum()
                    seen += valid.sum()
                bar.update()
                if checkpoint is not None:
                    checkpoint.after_step(epoch, step, model, optimizer, hooks, total)
            done = 0
            for hook in hooks:
                hook.after_epoch(model, epoch + 1)
            mean_loss = total.item() / max(len(batches), 1)  # one sync per epoch
            if not math.isfinite(mean_loss):
                raise Diverged(f"{desc}: the loss became {mean_loss} in epoch {epoch + 1} of "
                               f"{epochs}; a lower learning rate may train")
            log.debug("%s epoch %d/%d loss %.4f", desc, epoch + 1, epochs, mean_loss)
            if curve is not None:
                curves.add(curve, epoch + 1, mean_loss,
                           correct.item() * 100.0 / seen.item() if seen.item() else math.nan)
        for hook in hooks:
            hook.finish(model, batches)
        if checkpoint is not None:
            checkpoint.finish(epochs, model, optimizer, hooks)
    bar.close()
    if watch is not None:
        watch.remove()
    return model.eval()


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, batches: Iterable,
                         dtype: torch.dtype | None = None) -> None:
    """Re-estimate the running statistics of every BatchNorm that trains (a frozen teacher's stay)
    as the plain average over one pass, with no weight changes. A `Batches` stream gives its
    images in order, unaugmented (so a run resumed at the very end gets the same statistics);
    any other stream is iterated as it is."""
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    device = next(model.parameters()).device
    if isinstance(batches, Batches):
        size, n = batches.batch_size, len(batches.x)
        # a trailing batch of one cannot pass batch norm in train mode
        images = (batches.images(slice(i, i + size)) for i in range(0, n, size) if n - i > 1)
    else:  # a Zip's x is a tuple of batches (NegGrad+'s retain and forget): each passes
        images = (part for x, _, _ in batches for part in (x if isinstance(x, tuple) else (x,)))
    for x in images:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def train_from_scratch(model: torch.nn.Module, batches, recipe, *, desc: str = "train",
                       whiten_samples: int = 5000, checkpoint: TrainCheckpoint | None = None,
                       loss: Loss | None = None) -> torch.nn.Module:
    """Train a freshly built model with a recipe (a `conf/train` node): SGD (Nesterov, BN-bias lr
    scale), the recipe's schedule, the lookahead EMA and the `epoch_limits()` of the model's parts
    (runner.hooks), label smoothing, precision, and `torch.compile` when asked. `loss` replaces
    the recipe's label-smoothed cross-entropy (an ensemble's joint loss).

    A part with `init_from_data(images)` (airbench's whitening layer; each member of an ensemble)
    first gets `whiten_samples` training images, evenly spaced through the set so every class is
    there even when it is sorted. The compiled module is only used to train; `model` itself holds
    the weights afterwards. `checkpoint` makes the training resumable (see `fit`).
    """
    limits = {}
    for prefix, part in model.named_modules():
        if hasattr(part, "init_from_data"):
            n = len(batches.x)
            pick = torch.linspace(0, n - 1, min(n, whiten_samples), device=batches.x.device).long()
            part.init_from_data(to_float(batches.x[pick]))
        if hasattr(part, "epoch_limits"):
            limits.update({f"{prefix}.{name}" if prefix else name: epochs
                           for name, epochs in part.epoch_limits().items()})
    steps_per_epoch = len(batches)
    opt = sgd(model, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
              nesterov=recipe.nesterov, bias_lr_scale=recipe.bias_lr_scale)
    hooks = [Schedule(make_scheduler(opt, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
                                     **recipe.schedule))]
    if limits:
        hooks.append(FreezeAfter(model, limits, steps_per_epoch))
    if recipe.lookahead is not None:
        hooks.append(Lookahead(model, dict(recipe.lookahead), steps_per_epoch,
                               recipe.epochs * steps_per_epoch))
    if loss is None:
        loss = on_logits(functools.partial(F.cross_entropy,
                                           label_smoothing=recipe.label_smoothing))
    runnable = torch.compile(model) if recipe.compile else model
    fit(runnable, batches, epochs=recipe.epochs, optimizer=opt, hooks=hooks, loss=loss,
        precision=recipe.precision, desc=desc, checkpoint=checkpoint)
    return model.eval()


def finetune(model: torch.nn.Module, batches: Iterable, *, epochs: int, lr: float,
             momentum: float, weight_decay: float, decay_every: int, decay_gamma: float,
             loss: Loss = cross_entropy, grad_hook: Callable[[torch.nn.Module], None] | None = None,
             precision: str = "fp32", desc: str = "unlearn") -> torch.nn.Module:
    """The unlearning papers' fine-tuning: SGD with momentum, step decay every `decay_every` epochs."""
    opt = sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, name="step", epochs=epochs, step_size=decay_every, gamma=decay_gamma)
    return fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, loss=loss,
               grad_hook=grad_hook, precision=precision, desc=desc)
