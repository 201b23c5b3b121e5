"""The optimizer of every training: SGD, and `EpochAwareSGD` for airbench's extras and FastClip."""

from __future__ import annotations

import torch

from models.fastclip import Clipper, clippers_of


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
