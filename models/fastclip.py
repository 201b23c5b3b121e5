"""FastClip: clipping the spectral norm of every conv and linear layer as a training option.

After the FastClip paper (Boroojeny et al., AISTATS 2024, arXiv:2402.16017), as REFERENCE.md
states it; the spectral machinery (PowerQR, the clip of one layer) is in models/spectral.py.
`ClipSpec` / `attach` / `Clipper`: clipping as a training option of a model (`model.clip=1.0`).
`attach` gives the model a `fastclip` attribute (a plain object, not a submodule: the state_dict
is unchanged); every `runner.train.fit` of the model (its `runner.hooks.Clip`) then runs one
warm-started PowerQR iteration per layer after each step (100 before the first), clips every
layer every `every` steps, and clips once more at the end of training until each layer is
within `FINAL_TOLERANCE` of the target. Clipping stays with the model through `deepcopy`, so the
unlearning methods' fine-tuning of a clipped model keeps it clipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from models.spectral import AFFINE, PowerQR, clip_layer, input_shapes

log = logging.getLogger(__name__)

FINAL_TOLERANCE, FINAL_ROUNDS, FINAL_ITERATIONS = 0.01, 20, 100
DRIFT_WARNING = 1.2  # warn when a layer ends training this many times above the target (without
                     # batch norm; with it, a conv's scale does not change the function)


@dataclass(frozen=True)
class ClipSpec:
    """`model.clip*` of the config: the target spectral norm of every conv and linear layer and
    how the clipping runs (see the module doc)."""

    target: float
    every: int | None = None   # optimizer steps between clips; None: 50 with batch norm in the
                               # model, 100 without (the paper)
    steps: int = 5             # exact-line-search descent steps per clip (our choice)
    push_up: float | None = 0.05  # conv layers this far below the target are raised to it
    init_iterations: int = 100    # PowerQR iterations before the first step (the paper)

    def __post_init__(self):
        for name in ("target", "push_up"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))) and not (
                    name == "push_up" and value is None):
                raise ValueError(f"clip{'_' + name if name != 'target' else ''} must be a "
                                 f"number, got {value!r}")
        for name in ("every", "steps", "init_iterations"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int)) and not (
                    name == "every" and value is None):
                raise ValueError(f"clip_{name} must be an integer, got {value!r}")
        if not self.target > 0:
            raise ValueError(f"clip: the target spectral norm must be > 0, got {self.target}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"clip_every must be null or >= 1, got {self.every}")
        if self.steps < 1 or self.init_iterations < 1:
            raise ValueError(f"clip_steps and init_iterations must be >= 1, got {self.steps} "
                             f"and {self.init_iterations}")
        if self.push_up is not None and self.push_up < 0:
            raise ValueError(f"clip_push_up must be null or >= 0, got {self.push_up}")


class Clipper:
    """The PowerQR state of every conv and linear layer of one model, and its clipping schedule.
    A plain object held by the model as `model.fastclip` (see `attach`)."""

    def __init__(self, model: nn.Module, spec: ClipSpec, example: torch.Tensor):
        shapes = input_shapes(model, example)
        has_bn = any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
        self.spec, self.every, self.has_bn = spec, spec.every or (50 if has_bn else 100), has_bn
        # k = 1: the top singular vector, what clipping and LOTOS (its k = 1) use.
        # Frozen layers (airbench's whitening conv) are the data's, not the training's: left alone.
        self.states = {name: PowerQR(layer, shapes[name]) for name, layer in model.named_modules()
                       if isinstance(layer, AFFINE) and layer.weight.requires_grad}

    def trainable(self) -> bool:
        """False for a frozen copy (SCRUB's teacher): a training never clips it."""
        return any(s.layer.weight.requires_grad for s in self.states.values())

    def after_step(self, step: int) -> None:
        """After optimizer step `step` (1-based): one PowerQR iteration per layer, and a clip of
        every layer every `every` steps. The first call runs `init_iterations` and clips, so the
        training goes on from clipped layers."""
        if any(s.x is None for s in self.states.values()):
            gen = torch.Generator().manual_seed(0)
            for s in self.states.values():
                s.run(self.spec.init_iterations, gen)
        elif step % self.every:
            for s in self.states.values():
                s.run(1)
            return
        for s in self.states.values():
            self._clip(s, iterations=1)

    def finish(self) -> None:
        """The end of a training: every layer at its target (see `_finish_layer`). Then the
        PowerQR state is dropped, so the next training of this model (an unlearning fine-tune)
        starts the same way whether the model was trained in this process or loaded from the
        cache: `init_iterations` from the seeded start, and a clip."""
        gen = torch.Generator().manual_seed(1)
        before, rescaled = {}, []
        for name, s in self.states.items():
            before[name], fell_back = self._finish_layer(s, gen)
            if fell_back:
                rescaled.append(name)
            s.x = None
        worst = max(before, key=before.get)
        if not self.has_bn and before[worst] > DRIFT_WARNING * self.spec.target:
            log.warning("FastClip: at the end of training %s had spectral norm %.3g against a "
                        "target of %g; the final clip changes the model that much. Clip more "
                        "often (model.clip_every, now %d steps).", worst, before[worst],
                        self.spec.target, self.every)
        if rescaled:
            log.warning("FastClip: %d layers (%s) still missed the target after %d final clips; "
                        "they were rescaled onto it", len(rescaled), ", ".join(rescaled),
                        FINAL_ROUNDS)

    def _finish_layer(self, s: PowerQR, gen: torch.Generator) -> tuple[float, bool]:
        """Clip until a check from a fresh random start (`FINAL_ITERATIONS` unshifted PowerQR
        iterations: the warm start sits on the direction just clipped, and a next singular value
        above the target has next to no component along it; the shifted iteration would not pick
        one just above a crowd of singular values at the target out of it in time) finds the
        layer within FINAL_TOLERANCE of the
        target: at or below it, and for a conv layer that is pushed up, at or above it too. A
        layer still outside after FINAL_ROUNDS clips (many singular values above the target, each
        clip lowers one) is rescaled onto the target. Returns the first sigma and whether the
        layer was rescaled."""
        target, tol = self.spec.target, FINAL_TOLERANCE
        pushed = self.spec.push_up is not None and isinstance(s.layer, nn.Conv2d)
        first = None
        for _ in range(FINAL_ROUNDS + 1):
            probe = PowerQR(s.layer, s.input_shape, k=s.k)
            sigma = float(probe.run(FINAL_ITERATIONS, gen, shift=0.0)[0])
            first = sigma if first is None else first
            s.x = probe.x
            if sigma <= target + tol and (not pushed or sigma >= target - tol):
                return first, False
            clip_layer(s, target, steps=self.spec.steps, push_up=tol if pushed else None,
                       iterations=0)
        with torch.no_grad():
            s.layer.weight.mul_(target / sigma)
        return first, True

    def _clip(self, state: PowerQR, iterations: int) -> tuple[float, float]:
        return clip_layer(state, self.spec.target, steps=self.spec.steps,
                          push_up=self.spec.push_up, iterations=iterations)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {name: s.x for name, s in self.states.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, s in self.states.items():
            s.x = None if state[name] is None else state[name].to(s.layer.weight.device).clone()


def attach(model: nn.Module, spec: ClipSpec, example: torch.Tensor) -> nn.Module:
    """Make clipping a training option of `model` (`example`: one input batch, for the layers'
    input shapes). Returns the model."""
    # object.__setattr__: a plain attribute, so the Clipper's layers are not registered twice.
    object.__setattr__(model, "fastclip", Clipper(model, spec, example))
    return model


def clippers_of(model: nn.Module) -> list[Clipper]:
    """The Clippers of `model` and its submodules (an ensemble's members) that a training of
    `model` trains."""
    found = [getattr(m, "fastclip", None) for m in model.modules()]
    # dict.fromkeys: once each (a torch.compile'd model answers for the module it wraps too)
    return [c for c in dict.fromkeys(found) if isinstance(c, Clipper) and c.trainable()]
