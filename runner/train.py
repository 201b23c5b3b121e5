"""THE training loop. One `fit` trains the original, the retrain oracle and every fine-tuning method.

A batch stream yields `(x, y, sign)`: sign +1 descends on the stream's loss, -1 ascends (gradient
ascent); `data.loader.Concat` chains streams into one epoch. `grad_hook(model)` runs between
backward and the optimizer step (SalUn's saliency mask is one).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from contextlib import nullcontext
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.loader import Batches, to_float
from models.fastclip import Clipper, clippers_of
from runner.checkpoint import TrainCheckpoint

log = logging.getLogger("runner.train")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GradHook = Callable[[torch.nn.Module], None]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
        nesterov: bool = False, bias_lr_scale: float = 1.0, steps_per_epoch: int | None = None,
        total_steps: int | None = None, epoch_limits: dict[str, int] | None = None,
        lookahead: dict | None = None) -> torch.optim.SGD:
    """SGD over the trainable parameters. `bias_lr_scale` != 1 puts the BatchNorm shifts in a group
    of their own at lr x scale and weight decay / scale, so their decay per step (lr x wd) is the
    others' (airbench's "bias scaler"). With `epoch_limits`, `lookahead` or a clipped model
    (models.fastclip.attach) it is an `EpochAwareSGD`, which needs the step counts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if bias_lr_scale != 1.0:
        norm_bias = {id(m.bias) for m in model.modules()
                     if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.bias is not None}
        groups = [{"params": [p for p in params if id(p) not in norm_bias]},
                  {"params": [p for p in params if id(p) in norm_bias],
                   "lr": lr * bias_lr_scale, "weight_decay": weight_decay / bias_lr_scale}]
    groups = [g for g in groups if g["params"]]
    options = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    clippers = clippers_of(model)
    if epoch_limits or lookahead is not None or clippers:
        if steps_per_epoch is None or total_steps is None:
            raise ValueError("sgd: epoch_limits, lookahead and clipping need steps_per_epoch "
                             "and total_steps")
        return EpochAwareSGD(model, groups, steps_per_epoch=steps_per_epoch,
                             total_steps=total_steps, epoch_limits=epoch_limits or {},
                             lookahead=lookahead, clippers=clippers, **options)
    return torch.optim.SGD(groups, **options)


class EpochAwareSGD(torch.optim.SGD):
    """SGD that counts its steps and adds two things airbench94 does (Jordan, arXiv:2404.00498):

    - `epoch_limits` {parameter name: N}: the parameter trains for the first N epochs only (the
      model's `epoch_limits()`; airbench's whitening bias, N = 3). From then on its gradient is
      dropped before each step, so neither momentum nor weight decay moves it.
    - `lookahead` {start_epochs, decay_base, decay_pow, every_n_steps} or None: an EMA of the
      model's whole float state (weights and BatchNorm statistics). From epoch `start_epochs` on,
      every `every_n_steps` steps the EMA moves 1 - rho of the way to the model and the model is set
      to the EMA, rho = decay_base ** every_n_steps * (step / total_steps) ** decay_pow (averaging
      harder as training ends); the first such step only starts the EMA. At the end of every epoch
      the model is set to the EMA.

    And FastClip (models.fastclip): after every step, and after the lookahead so that the model's
    own weights are the clipped ones, each of `clippers` updates its PowerQR state and clips on
    its schedule; `finish()`, which `fit` calls after the last step, clips every layer to its
    target.

    Its state_dict holds the step count and the EMA, so a training resumed from a checkpoint goes
    on exactly as it would have.
    """

    def __init__(self, model: torch.nn.Module, groups, *, steps_per_epoch: int, total_steps: int,
                 epoch_limits: dict[str, int], lookahead: dict | None,
                 clippers: list[Clipper] = (), **options):
        super().__init__(groups, **options)
        named = dict(model.named_parameters())
        self.limited = [(named[name], epochs * steps_per_epoch)
                        for name, epochs in epoch_limits.items()]
        self.model, self.lookahead = model, lookahead
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.steps = 0
        self.ema: dict[str, torch.Tensor] | None = None
        self.clippers = list(clippers)

    @torch.no_grad()
    def step(self, closure=None):
        for param, last_step in self.limited:
            if self.steps >= last_step:
                param.grad = None
        loss = super().step(closure)
        self.steps += 1
        la = self.lookahead
        if la is not None:
            epoch = (self.steps - 1) // self.steps_per_epoch
            if epoch >= la["start_epochs"] and self.steps % la["every_n_steps"] == 0:
                if self.ema is None:
                    self.ema = {k: v.detach().clone() for k, v in self._float_state().items()}
                else:
                    rho = (la["decay_base"] ** la["every_n_steps"]
                           * (self.steps / self.total_steps) ** la["decay_pow"])
                    self._pull(1.0 - rho)
            if self.ema is not None and self.steps % self.steps_per_epoch == 0:
                self._pull(0.0)  # an epoch's end: the model becomes the EMA
        for clipper in self.clippers:
            clipper.after_step(self.steps)
        return loss

    def finish(self) -> None:
        """The end of training: every clipped layer at its target."""
        for clipper in self.clippers:
            clipper.finish()

    def _float_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def _pull(self, weight: float) -> None:
        """EMA += weight * (model - EMA); then model = EMA."""
        for name, value in self._float_state().items():
            self.ema[name].lerp_(value, weight)
            value.copy_(self.ema[name])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch_aware": {
            "steps": self.steps, "ema": self.ema, "clip": [c.state_dict() for c in self.clippers]}}

    def load_state_dict(self, state_dict: dict) -> None:
        mine = state_dict["epoch_aware"]
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "epoch_aware"})
        self.steps = mine["steps"]
        float_state = self._float_state()
        self.ema = (None if mine["ema"] is None else
                    {k: v.to(float_state[k].device).clone() for k, v in mine["ema"].items()})
        saved_clip = mine.get("clip", [])
        if len(saved_clip) != len(self.clippers):
            raise ValueError(f"the saved state has {len(saved_clip)} clipped models, this "
                             f"optimizer {len(self.clippers)}")
        for clipper, saved in zip(self.clippers, saved_clip):
            clipper.load_state_dict(saved)


def triangle(step: int, total: int, warmup: float, start: float, end: float) -> float:
    """Learning-rate factor of the warm-up/decay schedule: linear from `start` to 1 over the first
    `warmup` fraction of the `total` steps, then linear to `end` at the last step (airbench)."""
    peak = warmup * total
    if step < peak:
        return start + (1.0 - start) * step / peak
    return 1.0 + (end - 1.0) * (step - peak) / max(total - peak, 1e-12)


def make_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int,
                   step_size: int | None = None, gamma: float | None = None,
                   warmup: float | None = None, start: float | None = None,
                   end: float | None = None, steps_per_epoch: int | None = None):
    """Learning-rate schedule: `step` (x gamma every step_size epochs), `cosine`, `constant`, all
    per epoch, or `triangle` (see `triangle`), per optimizer step; the latter's scheduler carries
    `per_step = True`, which `fit` reads."""
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "constant":
        return None
    if name == "triangle":
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: triangle(i, total, warmup, start, end))
        sched.per_step = True
        return sched
    raise ValueError(f"unknown schedule {name!r}; choose step, cosine, constant or triangle")


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


def fit(model: torch.nn.Module, batches: Iterable, *, epochs: int,
        optimizer: torch.optim.Optimizer, scheduler=None, loss_fn: LossFn = F.cross_entropy,
        grad_hook: GradHook | None = None, precision: str = "fp32",
        desc: str = "train", checkpoint: TrainCheckpoint | None = None) -> torch.nn.Module:
    """Train `model` in place for `epochs` passes over `batches`; returns the model in eval mode.
    With `checkpoint` (batches must be one `Batches` stream), training resumes from its saved
    state, if any, and saves its state as it goes (runner.checkpoint)."""
    dtype = PRECISIONS[precision]
    device = next(model.parameters()).device
    steps = epochs * len(batches)
    per_step = getattr(scheduler, "per_step", False)
    start_epoch, done = 0, 0  # where a resumed run picks up: its epoch, and steps done in it
    if checkpoint is not None:
        start_epoch, done = checkpoint.resume(model, optimizer, scheduler, batches)
    # A bar only where someone watches a terminal and the loop is long enough to wait on.
    bar = tqdm(total=steps, initial=start_epoch * len(batches) + done, desc=desc, leave=False,
               disable=not sys.stderr.isatty() or steps < 200)
    with checkpoint.catching_signals() if checkpoint is not None else nullcontext():
        for epoch in range(start_epoch, epochs):
            model.train()
            total = torch.zeros((), device=device)
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
                    loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                (loss * sign).backward()
                if grad_hook is not None:
                    grad_hook(model)
                optimizer.step()
                if per_step:
                    scheduler.step()
                total += loss.detach().float()
                bar.update()
                if checkpoint is not None:
                    checkpoint.after_step(epoch, step, model, optimizer, scheduler, total)
            done = 0
            if scheduler is not None and not per_step:
                scheduler.step()
            mean_loss = total.item() / max(len(batches), 1)  # one sync per epoch
            if not math.isfinite(mean_loss):
                raise Diverged(f"{desc}: the loss became {mean_loss} in epoch {epoch + 1} of "
                               f"{epochs}; a lower learning rate may train")
            log.debug("%s epoch %d/%d loss %.4f", desc, epoch + 1, epochs, mean_loss)
        if isinstance(optimizer, EpochAwareSGD) and optimizer.clippers:
            optimizer.finish()  # the last clip moves the weights under the BN statistics:
            recompute_batch_norm(model, batches, dtype)
        if checkpoint is not None:
            checkpoint.finish(epochs, model, optimizer, scheduler)
    bar.close()
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
    else:
        images = (x for x, _, _ in batches)
    for x in images:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def train_from_scratch(model: torch.nn.Module, batches, recipe, *, desc: str = "train",
                       whiten_samples: int = 5000, checkpoint: TrainCheckpoint | None = None,
                       loss_fn: LossFn | None = None) -> torch.nn.Module:
    """Train a freshly built model with a recipe (a `conf/train` node): SGD (Nesterov, BN-bias lr
    scale; the lookahead EMA, the `epoch_limits()` of the model's parts and FastClip through
    `EpochAwareSGD`), the recipe's schedule, label smoothing, precision, and `torch.compile` when
    asked. `loss_fn` replaces the recipe's label-smoothed cross-entropy (an ensemble's joint loss).

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
    lookahead = None if recipe.lookahead is None else dict(recipe.lookahead)
    opt = sgd(model, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
              nesterov=recipe.nesterov, bias_lr_scale=recipe.bias_lr_scale,
              steps_per_epoch=len(batches), total_steps=recipe.epochs * len(batches),
              epoch_limits=limits, lookahead=lookahead)
    sched = make_scheduler(opt, epochs=recipe.epochs, steps_per_epoch=len(batches),
                           **recipe.schedule)
    if loss_fn is None:
        loss_fn = functools.partial(F.cross_entropy, label_smoothing=recipe.label_smoothing)
    runnable = torch.compile(model) if recipe.compile else model
    fit(runnable, batches, epochs=recipe.epochs, optimizer=opt, scheduler=sched, loss_fn=loss_fn,
        precision=recipe.precision, desc=desc, checkpoint=checkpoint)
    return model.eval()


def finetune(model: torch.nn.Module, batches: Iterable, *, epochs: int, lr: float,
             momentum: float, weight_decay: float, decay_every: int, decay_gamma: float,
             loss_fn: LossFn = F.cross_entropy, grad_hook: GradHook | None = None,
             precision: str = "fp32", desc: str = "unlearn") -> torch.nn.Module:
    """The unlearning papers' fine-tuning: SGD with momentum, step decay every `decay_every` epochs."""
    opt = sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
              steps_per_epoch=len(batches), total_steps=epochs * len(batches))
    sched = make_scheduler(opt, name="step", epochs=epochs, step_size=decay_every, gamma=decay_gamma)
    return fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, loss_fn=loss_fn,
               grad_hook=grad_hook, precision=precision, desc=desc)
