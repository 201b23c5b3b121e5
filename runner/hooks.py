"""The per-step callbacks of `runner.train.fit`: everything a training does besides the SGD step.

`fit` runs one loop: loss, backward, each hook's `after_backward`, the optimizer's step, each
hook's `after_step`; at an epoch's end each hook's `after_epoch`, and when training ends each
hook's `finish`. A hook's `state_dict()` goes into the training checkpoint, so a resumed training
goes on exactly as it would have. Steps are counted by `fit` over the whole training (a resumed
one included): `after_backward` gets the number of optimizer steps done before this one,
`after_step` the number done with it.

The hooks of the project: `GradHook` (a function of the model's gradients: SalUn's mask, the l1
penalty), `Schedule` (a torch learning-rate scheduler, per step or per epoch), `FreezeAfter`
(airbench's whitening bias trains for its first epochs only), `Lookahead` (airbench's EMA of the
weights) and `Clip` (FastClip; `fit` adds it for a model that carries clipping).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from models.fastclip import Clipper, clippers_of


class Hook:
    """A training callback; every method is optional (the defaults do nothing)."""

    def after_backward(self, model: torch.nn.Module, step: int) -> None:
        """The gradients are there; the optimizer has not stepped (`step` steps done before)."""

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """The optimizer has stepped; `step` steps are done, this one included."""

    def after_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        """`epoch` epochs are done."""

    def finish(self, model: torch.nn.Module, batches: Iterable) -> None:
        """The last step is done."""

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


class GradHook(Hook):
    """`fn(model)` between the backward pass and the optimizer step."""

    def __init__(self, fn: Callable[[torch.nn.Module], None]):
        self.fn = fn

    def after_backward(self, model, step):
        self.fn(model)


class Schedule(Hook):
    """A torch lr scheduler, stepped after every optimizer step if it has `per_step` set
    (runner.recipe.PerStepLR), else at every epoch's end."""

    def __init__(self, scheduler):
        self.scheduler, self.per_step = scheduler, getattr(scheduler, "per_step", False)

    def after_step(self, model, step):
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, model, epoch):
        if not self.per_step:
            self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)


class FreezeAfter(Hook):
    """`limits` {parameter name: N}: the parameter trains for the first N epochs only (a model's
    `epoch_limits()`; airbench's whitening bias, N = 3). From then on its gradient is dropped
    before each step, so neither momentum nor weight decay moves it."""

    def __init__(self, model: torch.nn.Module, limits: dict[str, int], steps_per_epoch: int):
        named = dict(model.named_parameters())
        self.limited = [(named[name], epochs * steps_per_epoch) for name, epochs in limits.items()]

    def after_backward(self, model, step):
        for param, last_step in self.limited:
            if step >= last_step:
                param.grad = None


class Lookahead(Hook):
    """airbench94's EMA of the model's whole float state, weights and BatchNorm statistics (Jordan,
    arXiv:2404.00498). `spec` {start_epochs, decay_base, decay_pow, every_n_steps}: from epoch
    `start_epochs` on, every `every_n_steps` steps the EMA moves 1 - rho of the way to the model
    and the model is set to the EMA, rho = decay_base ** every_n_steps * (step / total_steps) **
    decay_pow (averaging harder as training ends); the first such step only starts the EMA. At
    the end of every epoch the model is set to the EMA."""

    def __init__(self, model: torch.nn.Module, spec: dict, steps_per_epoch: int,
                 total_steps: int):
        self.model, self.spec = model, dict(spec)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.ema: dict[str, torch.Tensor] | None = None
        self.steps = 0  # the last step seen

    @torch.no_grad()
    def after_step(self, model, step):
        self.steps = step
        la = self.spec
        epoch = (step - 1) // self.steps_per_epoch
        if epoch >= la["start_epochs"] and step % la["every_n_steps"] == 0:
            if self.ema is None:
                self.ema = {k: v.detach().clone() for k, v in self._float_state().items()}
            else:
                rho = (la["decay_base"] ** la["every_n_steps"]
                       * (step / self.total_steps) ** la["decay_pow"])
                self._pull(1.0 - rho)
        if self.ema is not None and step % self.steps_per_epoch == 0:
            self._pull(0.0)  # an epoch's end: the model becomes the EMA

    def _float_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def _pull(self, weight: float) -> None:
        """EMA += weight * (model - EMA); then model = EMA."""
        for name, value in self._float_state().items():
            self.ema[name].lerp_(value, weight)
            value.copy_(self.ema[name])

    def state_dict(self):
        return {"steps": self.steps, "ema": self.ema}

    def load_state_dict(self, state):
        self.steps = state["steps"]
        float_state = self._float_state()
        self.ema = (None if state["ema"] is None else
                    {k: v.to(float_state[k].device).clone() for k, v in state["ema"].items()})


class Clip(Hook):
    """FastClip (models.fastclip) of every clipped part of the model: after each step (after the
    EMA, so the model's own weights are the clipped ones) each Clipper updates its PowerQR state
    and clips on its schedule; at the end every layer is clipped to its target, which moves the
    weights under the BatchNorm statistics, so those are recomputed (`recompute`)."""

    def __init__(self, clippers: list[Clipper], recompute: Callable):
        self.clippers, self.recompute = clippers, recompute

    @classmethod
    def of(cls, model: torch.nn.Module, recompute: Callable) -> list["Clip"]:
        """[the model's Clip hook], or [] for a model without clipping."""
        clippers = clippers_of(model)
        return [cls(clippers, recompute)] if clippers else []

    def after_step(self, model, step):
        for clipper in self.clippers:
            clipper.after_step(step)

    def finish(self, model, batches):
        for clipper in self.clippers:
            clipper.finish()
        self.recompute(model, batches)

    def state_dict(self):
        return [c.state_dict() for c in self.clippers]

    def load_state_dict(self, state):
        if len(state) != len(self.clippers):
            raise ValueError(f"the saved state has {len(state)} clipped models, this training "
                             f"{len(self.clippers)}")
        for clipper, saved in zip(self.clippers, state):
            clipper.load_state_dict(saved)
