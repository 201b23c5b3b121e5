"""The `train` config group: the recipe of every model trained from scratch, and its schedules.

`Recipe` is the group's schema (runner.typed): each field's type and range, and the rules within
the group in `__post_init__`. A schedule is selected by `train.schedule.name`, which names one of
the classes in `SCHEDULES` below; its node holds that class's fields (keys of the other schedules
are ignored, so `train=paper train.schedule.name=cosine` works). Adding a schedule is adding a
class here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from omegaconf import MISSING

from runner.typed import BatchSize, Epochs, LR, Momentum, NonNegative


def triangle(step: int, total: int, warmup: float, start: float, end: float) -> float:
    """Learning-rate factor of the warm-up/decay schedule: linear from `start` to 1 over the first
    `warmup` fraction of the `total` steps, then linear to `end` at the last step (airbench)."""
    peak = warmup * total
    if step < peak:
        return start + (1.0 - start) * step / peak
    return 1.0 + (end - 1.0) * (step - peak) / max(total - peak, 1e-12)


class PerStepLR(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR that `fit` steps after every optimizer step rather than every epoch."""

    per_step = True


@dataclass
class Step:
    """lr x gamma every `step_size` epochs."""

    name: ClassVar[str] = "step"
    step_size: Optional[int] = None
    gamma: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.step_size or 0) < 1 or self.gamma is None:
            raise ValueError("train.schedule: the step schedule needs step_size >= 1 and gamma")

    def build(self, optimizer, epochs: int, steps_per_epoch: int | None):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


@dataclass
class Cosine:
    """Cosine annealing to zero over the epochs."""

    name: ClassVar[str] = "cosine"

    def build(self, optimizer, epochs: int, steps_per_epoch: int | None):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


@dataclass
class Constant:
    """The recipe's lr throughout."""

    name: ClassVar[str] = "constant"

    def build(self, optimizer, epochs: int, steps_per_epoch: int | None):
        return None


@dataclass
class Triangle:
    """`triangle` per optimizer step: warm up over the `warmup` fraction of the steps from lr x
    `start`, then decay to lr x `end` (airbench)."""

    name: ClassVar[str] = "triangle"
    warmup: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None

    def __post_init__(self) -> None:
        w, a, b = self.warmup, self.start, self.end
        if None in (w, a, b) or not (0 < w < 1 and a >= 0 and b >= 0):
            raise ValueError("train.schedule: the triangle schedule needs 0 < warmup < 1, "
                             f"start >= 0 and end >= 0, got warmup={w} start={a} end={b}")

    def build(self, optimizer, epochs: int, steps_per_epoch: int | None):
        total = epochs * steps_per_epoch
        return PerStepLR(optimizer, lambda i: triangle(i, total, self.warmup, self.start, self.end))


SCHEDULES = {cls.name: cls for cls in (Step, Cosine, Constant, Triangle)}


def schedule_of(node: dict) -> Any:
    """The schedule a `train.schedule` node names, built from its own keys."""
    name = node.get("name")
    if name not in SCHEDULES:
        names = list(SCHEDULES)
        raise ValueError(f"train.schedule.name must be {', '.join(names[:-1])} or {names[-1]}, "
                         f"got {name!r}")
    cls = SCHEDULES[name]
    return cls(**{f.name: node.get(f.name) for f in dataclasses.fields(cls)})


def schedule_spec(node: dict) -> dict:
    """What of a schedule node determines a model: its name and its own keys."""
    schedule = schedule_of(node)
    return {"name": schedule.name, **dataclasses.asdict(schedule)}


def make_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int,
                   steps_per_epoch: int | None = None, **params):
    """The torch scheduler of schedule `name` (None for `constant`); a per-step one is a
    `PerStepLR`."""
    return schedule_of({"name": name, **params}).build(optimizer, epochs, steps_per_epoch)


# The schema of a `train.schedule` node: a name and every schedule's fields (each reads its own).
ScheduleNode = dataclasses.make_dataclass("ScheduleNode", [("name", str, MISSING)] + [
    (f.name, typing.get_type_hints(cls)[f.name], None)
    for cls in SCHEDULES.values() for f in dataclasses.fields(cls)])


@dataclass
class Lookahead:
    """airbench's EMA of the weights (runner.hooks.Lookahead)."""

    start_epochs: int = MISSING
    decay_base: float = MISSING
    decay_pow: float = MISSING
    every_n_steps: int = MISSING

    def __post_init__(self) -> None:
        if not (self.start_epochs >= 0 and 0 < self.decay_base < 1 and self.decay_pow >= 0
                and self.every_n_steps >= 1):
            raise ValueError("train.lookahead needs start_epochs >= 0, 0 < decay_base < 1, "
                             f"decay_pow >= 0 and every_n_steps >= 1, got "
                             f"{dataclasses.asdict(self)}")


@dataclass
class Recipe:
    """How a model trains from scratch: SGD, the schedule, precision, label smoothing."""

    epochs: Epochs = MISSING
    batch_size: BatchSize = MISSING
    lr: LR = MISSING
    momentum: Momentum = MISSING
    weight_decay: NonNegative = MISSING
    nesterov: bool = MISSING
    schedule: ScheduleNode = MISSING  # type: ignore[valid-type]
    precision: str = MISSING          # fp32 | bf16 (autocast)
    channels_last: bool = MISSING
    label_smoothing: float = MISSING
    bias_lr_scale: float = MISSING
    compile: bool = MISSING
    lookahead: Optional[Lookahead] = MISSING

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be fp32 or bf16, got {self.precision!r}")
        schedule_of(dataclasses.asdict(self.schedule))
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.bias_lr_scale <= 0:
            raise ValueError(f"train.bias_lr_scale must be > 0, got {self.bias_lr_scale}")
