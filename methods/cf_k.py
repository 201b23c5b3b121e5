"""CF-k, catastrophic forgetting of the last k layers (Goel, Prabhu, Sanyal, Lim, Torr and
Kumaraguru, "Towards Adversarial Evaluation of Machine Unlearning" / "Evaluating Inexact
Unlearning Requires Revisiting Forgetting", 2022): the original with every layer frozen but the
last k, fine-tuned on D_R. EU-k (methods/eu_k.py) re-initializes those k layers first.

The last k layers, as in the Goel code (`src/methods.py`): walking the model's Conv and Linear
modules from the output end (registration order, reversed), the first k; the batch-norm layers
passed on the way (those registered after the k-th) train with them and are not counted. On our
ResNet-18, k = 1 is `fc`, k = 3 adds `layer4.1.conv2` and `layer4.1.conv1` (with `layer4.1.bn2`
and `layer4.1.bn1`), k = 6 is the whole last stage and `fc`.

Training: SGD with momentum on the trainable layers, the lr annealed from `lr` to `min_lr` by
cosine warm restarts stepped per epoch (T_0 = 1, T_mult = 2), gradients clipped to norm
`clip_norm` (the Goel code's `learn.py`). Where we differ: the frozen layers stay in eval mode,
so their batch-norm statistics do not move either (the Goel code trains the whole model in train
mode, so frozen layers' running statistics drift); a CF-k or EU-k model differs from the original
in its last k layers only.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from methods.common import UnlearnData
from runner.optim import sgd
from runner.train import fit
from runner.typed import BatchSize, ConfigError, Count, Epochs, LR, Momentum, NonNegative, Positive

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
NORMS = (nn.modules.batchnorm._NormBase,)


def weighted_layers(model: nn.Module) -> list[str]:
    """Names of the model's Conv and Linear modules, in registration order."""
    return [n for n, m in model.named_modules() if isinstance(m, WEIGHTED)]


def last_layers(model: nn.Module, k: int) -> tuple[list[str], list[str]]:
    """(the last k Conv/Linear modules, the batch-norm modules registered after the k-th of
    them): the part CF-k and EU-k train, by name."""
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED + NORMS)]
    counted, norms = [], []
    for name, m in reversed(modules):
        if len(counted) == k:
            break
        (counted if isinstance(m, WEIGHTED) else norms).append(name)
    if len(counted) < k:
        raise ValueError(f"k = {k}, but the model has {len(counted)} Conv and Linear layers")
    return counted, norms


class LastK(nn.Module):
    """The model with all but the modules `trained` frozen: their parameters get no gradient and
    they run in eval mode whatever `train()` asks (their batch-norm statistics are kept). A module
    that holds a trained one (the model itself, a stage) keeps the mode asked for, so a model
    whose forward reads `self.training` (airbench's test-time augmentation) trains as it would.
    A parameter the model keeps fixed (airbench's batch-norm scales) stays fixed; `restore()`
    gives back every parameter's own `requires_grad`."""

    def __init__(self, model: nn.Module, trained: list[str]):
        super().__init__()
        self.model = model
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        modules = dict(model.named_modules())
        keep = set(trained)
        trainable = {id(p) for name in trained for p in modules[name].parameters()}
        for p, flag in self.flags:
            p.requires_grad_(flag and id(p) in trainable)
        self.frozen = [m for n, m in modules.items()
                       if n not in keep and not any(t.startswith(n + ".") for t in keep)
                       and n != ""]

    def train(self, mode: bool = True) -> "LastK":
        self.model.train(mode)
        for m in self.frozen:
            m.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def restore(self) -> nn.Module:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return self.model


def retrain_last(model: nn.Module, data: UnlearnData, trained: list[str], *, epochs: int,
                 lr: float, min_lr: float, momentum: float, weight_decay: float, batch_size: int,
                 clip_norm: float | None, desc: str) -> nn.Module:
    """Train the modules `trained` of `model` on D_R with the Goel code's recipe, the rest frozen;
    returns the model in eval mode with every parameter's `requires_grad` as it was."""
    x, y = data.retain(desc)
    wrapped = LastK(model, trained)
    try:
        opt = sgd(wrapped, lr=lr, momentum=momentum, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2,
                                                                     eta_min=min_lr)
        params = [p for p in model.parameters() if p.requires_grad]

        def clip(_model: nn.Module) -> None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)

        fit(wrapped, data.stream(x, y, batch_size), epochs=epochs, optimizer=opt,
            scheduler=sched, grad_hook=clip if clip_norm is not None else None,
            precision=data.precision, desc=desc)
    finally:
        wrapped.restore()
    return model.eval()


def check_k(cfg: DictConfig) -> None:
    """Before any compute: the configured model has at least method.k Conv and Linear layers,
    and no FastClip (its clipping would rewrite the frozen layers too)."""
    from models.build import build_model

    if cfg.model.get("clip") is not None:
        raise ConfigError(f"method {cfg.method.name} trains the last k layers only; model.clip "
                          "would clip the frozen ones as well: set model.clip=null")
    with torch.random.fork_rng(devices=[]):  # building it draws no number of the run's
        n = len(weighted_layers(build_model(cfg.model, cfg.dataset)))
    if cfg.method.k > n:
        raise ConfigError(f"method.k = {cfg.method.k}, but the model ({cfg.model._target_}) has "
                          f"{n} Conv and Linear layers")


def unlearn(model: nn.Module, data: UnlearnData, *, k: Count, epochs: Epochs, lr: LR,
            min_lr: NonNegative, momentum: Momentum, weight_decay: NonNegative,
            batch_size: BatchSize, clip_norm: Positive | None) -> nn.Module:
    counted, norms = last_layers(model, k)
    return retrain_last(model, data, counted + norms, epochs=epochs, lr=lr, min_lr=min_lr,
                        momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                        clip_norm=clip_norm, desc="cf_k")


unlearn.needs_retain = True
unlearn.check = check_k
