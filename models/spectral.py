"""Spectral norms of affine layers, computed on the layer as it runs (FastClip's PowerQR).

A convolutional or linear layer M is an affine map; A(x) = M(x) - M(0) is its linear part,
whatever the padding (zeros, reflect, replicate, circular) and stride, because the layer itself is
run, never a formula for its matrix (Boroojeny et al., AISTATS 2024, arXiv:2402.16017).

- `PowerQR`: subspace iteration X <- QR((I + A^T A) X) on k input-shaped vectors, with A^T A X by
  autodiff (the gradient of ||A X||^2 / 2). The diagonal of R tends to 1 + sigma_i^2, so the top k
  singular values are sqrt(|R_ii - 1|). The shift by I keeps every iterate well defined. The paper
  runs 100 iterations from a random start, then 1 per training step from the last X (warm start).
- `clip_layer`: if the top singular value sigma exceeds the target c (or, for a conv layer, falls
  short of it by `push_up` or more), move the weights so that A v = c u, with v the top right and
  u the top left singular vector: a few steepest-descent steps on ||A' v - c u||^2 over the
  weights. The paper says "a few gradient steps"; here each step is an exact line search, which is
  possible because A' v is linear in the weights (`steps`, default 5, is our choice).
- `spectral_norms`: every conv and linear layer's top singular value, for reports.

The input shape of a conv layer (C, H, W) is the one it sees in the network: a convolution's
operator norm depends on the image size (through the borders).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

AFFINE = (nn.Conv2d, nn.Linear)


def linear_part(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A(x) = M(x) - M(0): the layer without its bias, optionally with other `weight`s."""
    w = layer.weight if weight is None else weight
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, w, None)  # honours padding_mode, stride, dilation, groups
    raise TypeError(f"not a conv or linear layer: {type(layer).__name__}")


def _ata(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A^T A x for a batch of inputs x, by one forward and one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = linear_part(layer, x, layer.weight.detach())
        (grad,) = torch.autograd.grad(0.5 * y.pow(2).sum(), x)
    return grad


@dataclass
class PowerQR:
    """The top-k singular subspace of one layer, kept between calls (warm start)."""

    layer: nn.Module
    input_shape: tuple[int, ...]   # one input without the batch axis: (C, H, W) or (features,)
    k: int = 1
    x: torch.Tensor | None = field(default=None, repr=False)  # (k, *input_shape), orthonormal rows

    @torch.no_grad()
    def run(self, iterations: int, generator: torch.Generator | None = None,
            shift: float = 1.0) -> torch.Tensor:
        """`iterations` more steps of subspace iteration on `shift` I + A^T A; returns the top k
        singular values, largest first. The shift keeps the warm-started training estimate
        steady; without it (0) the iteration converges faster when the top singular values are
        close, at the rate (sigma_2 / sigma_1)^2 instead of (shift + sigma_2^2) / (shift +
        sigma_1^2)."""
        w = self.layer.weight
        if self.x is None:  # drawn on the CPU: one seed gives the same start on any device
            self.x = torch.randn((self.k, *self.input_shape), generator=generator,
                                 dtype=torch.float32).to(w.device)
        x = self.x.to(w.device, torch.float32)
        r = None
        for _ in range(iterations):
            y = (shift * x + _ata(self.layer, x.to(w.dtype)).float()).reshape(self.k, -1)
            q, r = torch.linalg.qr(y.T)  # columns: the new orthonormal basis
            signs = torch.sign(torch.diagonal(r))
            signs[signs == 0] = 1
            x = (q * signs).T.reshape(self.k, *self.input_shape)
            r = r * signs[:, None]
        self.x = x
        if r is None:
            r = torch.linalg.qr(((shift * x + _ata(self.layer, x)).reshape(self.k, -1)).T)[1]
        return torch.sqrt(torch.abs(torch.diagonal(r) - shift))

    def top(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma, v, u) of the current estimate: A v = sigma u, |v| = |u| = 1."""
        v = self.x[:1] / self.x[:1].norm()
        with torch.no_grad():
            av = linear_part(self.layer, v)
        sigma = av.norm()
        return sigma, v, av / sigma.clamp_min(1e-12)


def clip_layer(state: PowerQR, target: float, *, steps: int = 5, push_up: float | None = 0.05,
               iterations: int = 1) -> tuple[float, float]:
    """Clip the layer's top singular value to `target` (see the module doc); returns sigma before
    and after. `push_up` (conv layers only): also raise sigma to the target when it is lower by at
    least this much; None never raises."""
    if iterations:
        state.run(iterations)
    sigma, v, u = state.top()
    before = float(sigma)
    raise_it = (push_up is not None and isinstance(state.layer, nn.Conv2d)
                and target - before >= push_up)
    if before <= target and not raise_it:
        return before, before
    w = state.layer.weight
    goal = target * u
    with torch.no_grad():
        for _ in range(steps):
            if (linear_part(state.layer, v) - goal).norm() < 1e-6:
                break
            with torch.enable_grad():
                weight = w.detach().requires_grad_(True)
                loss = (linear_part(state.layer, v, weight) - goal).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, weight)
            # ||A'v - cu||^2 is quadratic in the weights: the exact minimizer along -grad.
            j_grad = linear_part(state.layer, v, grad)
            denom = 2 * j_grad.pow(2).sum()
            if denom <= 0:
                break
            w -= (grad.pow(2).sum() / denom) * grad
    state.run(max(iterations, 1))
    return before, float(state.top()[0])


def spectral_norms(model: nn.Module, example: torch.Tensor, iterations: int = 100,
                   seed: int = 0) -> dict[str, float]:
    """The top singular value of every conv and linear layer of `model`, each on the input shape it
    sees when `model(example)` runs (`iterations` PowerQR steps from a seeded random start)."""
    shapes = input_shapes(model, example)
    gen = torch.Generator().manual_seed(seed)
    return {name: float(PowerQR(layer, shapes[name]).run(iterations, gen)[0])
            for name, layer in model.named_modules() if isinstance(layer, AFFINE)}


def input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The per-sample input shape of every conv and linear layer in one forward pass."""
    shapes, hooks = {}, []

    def record(name):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape[1:]))  # returns None: args unchanged
        return hook

    for name, layer in model.named_modules():
        if isinstance(layer, AFFINE):
            hooks.append(layer.register_forward_pre_hook(record(name)))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(example[:1])
            model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


# The last clip of a training repeats until each layer's estimate is this close to the target
# (at or below it for layers that are not pushed up), at most FINAL_ROUNDS times.
