"""What an unlearning method receives besides the model, and the batch streams it builds from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import numpy as np
import torch
from omegaconf import DictConfig

from data.loader import Augment, Batches, Concat, Relabel
from data.splits import forgets_class
from runner.typed import ConfigError, check_target, import_target

RetainPass = Literal["before", "after"]


@dataclass
class UnlearnData:
    """The forget set, the retain set (None when the method runs without access to it) and the
    training settings a method shares with the original model (augmentation, precision, seed)."""

    forget_x: torch.Tensor            # uint8 (n, C, H, W), on the device
    forget_y: torch.Tensor            # int64 (n,)
    retain_x: torch.Tensor | None
    retain_y: torch.Tensor | None
    num_classes: int
    augment: Augment
    seed: int
    precision: str = "fp32"
    channels_last: bool = False
    train_from_scratch: Callable[[], torch.nn.Module] | None = None  # the cached retrain oracle
    # AMUN's D_A: float images in [0, 1] and the original model's wrong labels on them, built by
    # the runner (and cached) for methods that declare
    # `unlearn.prepares = (runner.adversarial.AdversarialSets,)`.
    adversarial: tuple[torch.Tensor, torch.Tensor] | None = None
    # Where the forget (retain) samples sit in the training set; retain_idx is None with no D_R.
    forget_idx: np.ndarray | None = None
    retain_idx: np.ndarray | None = None

    def retain(self, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.retain_x is None:
            raise ValueError(f"{method} needs the retain set, but this run gives it none")
        return self.retain_x, self.retain_y

    def stream(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, salt: int = 0,
               sign: float = 1.0, relabel: Relabel | None = None,
               augment_mask: torch.Tensor | None = None) -> Batches:
        """Shuffled, augmented batches; `salt` makes streams of one method draw independently."""
        return Batches(x, y, batch_size=batch_size, shuffle=True, seed=self.seed * 1000 + salt,
                       augment=self.augment, relabel=relabel, sign=sign,
                       channels_last=self.channels_last, augment_mask=augment_mask)


def random_wrong_labels(num_classes: int, mask: torch.Tensor | None = None) -> Relabel:
    """A relabel function: each masked sample (all if mask is None) gets a fresh label drawn
    uniformly from the other num_classes - 1 classes, every time it is called (every epoch)."""

    def relabel(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        shift = torch.randint(1, num_classes, y.shape, device=y.device, generator=gen)
        wrong = (y + shift) % num_classes
        return wrong if mask is None else torch.where(mask, wrong, y)

    return relabel


def random_label_stream(data: UnlearnData, batch_size: int) -> Batches:
    """RL's stream: D_R + D_F (D_F alone without D_R), each forget sample relabelled with a fresh
    wrong label every epoch."""
    x, y = data.forget_x, data.forget_y
    is_forget = torch.ones(len(y), dtype=torch.bool, device=y.device)
    if data.retain_x is not None:
        x, y = torch.cat([data.retain_x, x]), torch.cat([data.retain_y, y])
        is_forget = torch.cat([torch.zeros(len(data.retain_y), dtype=torch.bool, device=y.device),
                               is_forget])
    return data.stream(x, y, batch_size, relabel=random_wrong_labels(data.num_classes, is_forget))


def with_retain_pass(data: UnlearnData, forget: Iterable, batch_size: int,
                     retain_pass: RetainPass) -> Iterable:
    """An epoch of `forget` plus, when the run gives D_R, one descent pass over D_R: `before` the
    forget pass (the AMUN code's GA, BS and BE: every epoch ends on the forget update) or `after`
    it (every epoch ends on the repair). Without D_R, `forget` alone."""
    if data.retain_x is None:
        return forget
    retain = data.stream(data.retain_x, data.retain_y, batch_size, salt=1)
    if retain_pass == "before":
        return Concat(retain, forget)
    if retain_pass == "after":
        return Concat(forget, retain)
    raise ValueError(f"retain_pass must be before or after, got {retain_pass!r}")


def method_keys(fn) -> frozenset[str]:
    """Keys of a method's node that are not keyword arguments of its function: `name`,
    `use_retain` (whether the runner hands it the retain set) and those its preparations read
    (`unlearn.prepares`; AMUN's D_A: `attack`, `adversarial_from`)."""
    return frozenset({"name", "use_retain"}.union(*(p.keys for p in getattr(fn, "prepares", ()))))


def check_method(cfg: DictConfig) -> None:
    """The run's method: its node against its function, and what the function declares it needs
    (`needs_retain`, `needs_class_forget`, `prepares`) or checks itself (`check(cfg)`)."""
    path = cfg.method.get("_target_")
    method = check_target(cfg.method, "method", 2,
                          method_keys(import_target(path, "method") if path else None))
    if not isinstance(cfg.method.get("use_retain"), bool):
        raise ConfigError("method.use_retain must be true or false")
    if getattr(method, "needs_retain", False) and not cfg.method.use_retain:
        raise ConfigError(f"method {cfg.method.name} needs the retain set; use_retain=false "
                          "is not possible for it")
    for preparation in getattr(method, "prepares", ()):
        preparation.check(cfg.method)
    if getattr(method, "needs_class_forget", False) and not forgets_class(cfg.forget):
        raise ConfigError(f"method {cfg.method.name} forgets a whole class: use forget=class "
                          "forget.class_id=K")
    if callable(getattr(method, "check", None)):  # a method's own check of the run's config
        method.check(cfg)


@torch.no_grad()
def reinitialize(module: torch.nn.Module) -> torch.nn.Module:
    """Every layer of `module` back to a fresh random initialization (PyTorch's default one:
    each submodule's `reset_parameters`, which also zeroes batch-norm statistics), in place,
    from the global torch generator (the runner seeds it before a method runs). A layer with an
    initialization of its own (airbench's identity filters) gets the default one."""
    for m in module.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return module
