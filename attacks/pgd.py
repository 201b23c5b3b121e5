"""Adversarial examples with eps doubling: Algorithm 1 of AMUN (Ebrahimpour-Boroojeny et al.,
"Not All Wrong is Bad: Using Adversarial Examples for Unlearning", ICML 2025, arXiv 2503.00917).

Exactly what is computed, per sample (x, y), images as floats in [0, 1] (the model normalizes):
  eps = eps_init; x_t = x (no random start)
  repeat for rounds r = 0 .. max_doublings:
      `steps` iterations of untargeted PGD on cross-entropy(model(x_t), y): the input gradient is
      normalized per sample (L2: to unit L2 norm; Linf: its sign), x_t += step_ratio * eps * g,
      then delta = x_t - x is projected onto the eps-ball around the ORIGINAL x (L2: rescaled if
      ||delta||_2 > eps; Linf: clamped) and x_t is clamped to [0, 1];
      if no iterate was misclassified: eps *= 2 and the next round continues from x_t.
The sample freezes at the FIRST misclassified iterate, x itself included: x_adv is that iterate,
y_adv the model's (wrong) prediction on it, eps the radius of the ball it was produced in (0 for
x itself). The check of an iterate is the forward pass that would compute its gradient, so each
iterate costs one model evaluation; the last iterate of the last round gets one forward of its own.
A sample never flipped ends with success=False, x_adv its last iterate and eps the last radius.

`fgsm_doubling` is the one-step variant: one step of size eps per radius (step_ratio 1, steps 1),
with the same doubling, projection and freezing rules.

Cost (`model_calls`: per-sample evaluations, a forward+backward on b samples counts b): a sample
that flips at iterate t of round r costs r * steps + t + 1. AMUN's target is under 3 PGD-50 runs
over the forget set, i.e. model_calls / n < 150 with steps = 50.

Batching: a pool of up to `batch_size` samples is attacked at once; a sample that freezes (or
exhausts its doublings) leaves the pool and the next unattacked sample takes its slot, so a
frozen sample costs nothing more and the batch stays full. Samples in the pool are therefore at
different rounds, which is why eps, the step counter and the round are per-sample tensors.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)

NORMS = ("l2", "linf")


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # float in [0, 1], shape of x
    y_adv: torch.Tensor  # int64: the model's prediction on x_adv (!= y where success)
    eps: torch.Tensor    # radius x_adv was found in; 0 for samples misclassified already
    success: torch.Tensor  # bool: x_adv is misclassified
    model_calls: int     # per-sample model evaluations, summed over samples


@dataclass
class _Pool:
    """The samples under attack; every field is indexed by pool slot."""

    idx: torch.Tensor       # position in the caller's x
    x0: torch.Tensor        # original images (the ball's centre)
    y: torch.Tensor
    x_t: torch.Tensor       # current iterate
    eps: torch.Tensor       # radius of the current round
    iter_eps: torch.Tensor  # radius of the ball x_t was produced in (0 for x_t = x0)
    step: torch.Tensor      # steps taken in the current round
    rounds: torch.Tensor    # doublings so far

    def select(self, keep: torch.Tensor) -> "_Pool":
        return _Pool(*(getattr(self, f.name)[keep] for f in fields(self)))

    def extend(self, other: "_Pool") -> "_Pool":
        return _Pool(*(torch.cat([getattr(self, f.name), getattr(other, f.name)])
                       for f in fields(self)))


@contextmanager
def _frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the attack; the caller's state comes back after."""
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_flags:
        p.requires_grad_(False)  # saves activations autograd would keep for weight gradients
    try:
        yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _new_pool(x: torch.Tensor, y: torch.Tensor, start: int, stop: int, eps_init: float) -> _Pool:
    n, dev = stop - start, x.device
    x0 = x[start:stop].detach().clone()
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    return _Pool(idx=torch.arange(start, stop, device=dev), x0=x0,
                 y=y[start:stop].to(dev, torch.long), x_t=x0.clone(),
                 eps=torch.full((n,), eps_init, dtype=x.dtype, device=dev),
                 iter_eps=torch.zeros(n, dtype=x.dtype, device=dev), step=zeros,
                 rounds=zeros.clone())


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (b,) vector to broadcast over images (b, C, H, W)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _pgd_step(pool: _Pool, grad: torch.Tensor, norm: str, step_ratio: float) -> torch.Tensor:
    """One ascent step of size step_ratio * eps, projected onto the eps-ball around x0, then
    clamped to [0, 1]."""
    if norm == "l2":
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # a zero gradient stays zero
        direction = grad / _per_sample(g_norm, grad)
    else:
        direction = grad.sign()
    eps = _per_sample(pool.eps, grad)
    delta = pool.x_t + step_ratio * eps * direction - pool.x0
    if norm == "l2":
        d_norm = _per_sample(delta.flatten(1).norm(dim=1), delta)
        delta = delta * torch.clamp(eps / d_norm.clamp_min(1e-12), max=1.0)
    else:
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    # Clamping to [0, 1] moves each coordinate toward x0 (itself in [0, 1]): still inside the ball.
    return (pool.x0 + delta).clamp_(0.0, 1.0)


def _advance(pool: _Pool, max_doublings: int, steps: int) -> None:
    """Count the step just taken; a finished round doubles eps unless it was the last one."""
    pool.iter_eps = pool.eps
    pool.step = pool.step + 1
    roll = (pool.step == steps) & (pool.rounds < max_doublings)
    pool.eps = torch.where(roll, pool.eps * 2, pool.eps)
    pool.rounds = pool.rounds + roll.long()
    pool.step = torch.where(roll, torch.zeros_like(pool.step), pool.step)


def _attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
            eps_init: float, steps: int, step_ratio: float, max_doublings: int,
            batch_size: int) -> AttackResult:
    """The shared loop of pgd_doubling and fgsm_doubling (see the module docstring)."""
    _check_args(x, y, norm, eps_init, steps, step_ratio, max_doublings, batch_size)
    n = len(x)
    x_adv, y_adv = x.detach().clone(), y.detach().to(x.device, torch.long, copy=True)
    eps_out = torch.zeros(n, dtype=x.dtype, device=x.device)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    calls, taken = 0, min(batch_size, n)
    pool = _new_pool(x, y, 0, taken, eps_init)
    # Samples done, where someone watches a terminal (AMUN's D_A of 5,000 samples takes minutes).
    bar = tqdm(total=n, desc="adversarial examples", leave=False, unit="sample",
               disable=not sys.stderr.isatty() or n < 256)
    while len(pool.idx):
        x_in = pool.x_t.requires_grad_(True)
        logits = model(x_in).float()
        calls += len(pool.idx)
        pred = logits.argmax(1)
        wrong = pred != pool.y
        exhausted = (pool.rounds == max_doublings) & (pool.step == steps)
        leave = wrong | exhausted
        stay = (~leave).nonzero().squeeze(1)  # the one host sync per step
        if len(stay):
            # Leaving rows get no loss, hence a zero gradient; their slots are dropped below.
            loss = (F.cross_entropy(logits, pool.y, reduction="none") * ~leave).sum()
            grad, = torch.autograd.grad(loss, x_in)
        pool.x_t = x_in.detach()
        if len(stay) < len(pool.idx):
            # Write the leaving rows out by masked selection over the whole pool: index
            # arithmetic on the device, no second sync.
            pick = _per_sample(leave, pool.x_t)
            x_adv[pool.idx] = torch.where(pick, pool.x_t, x_adv[pool.idx])
            y_adv[pool.idx] = torch.where(leave, pred, y_adv[pool.idx])
            eps_out[pool.idx] = torch.where(leave, pool.iter_eps, eps_out[pool.idx])
            success[pool.idx] = torch.where(leave, wrong, success[pool.idx])
            bar.update(len(pool.idx) - len(stay))
            pool = pool.select(stay)
            if len(stay):
                grad = grad[stay]
        if len(pool.idx):
            pool.x_t = _pgd_step(pool, grad, norm, step_ratio)
            _advance(pool, max_doublings, steps)
        if len(pool.idx) < batch_size and taken < n:  # refill the freed slots
            stop = min(n, taken + batch_size - len(pool.idx))
            pool = pool.extend(_new_pool(x, y, taken, stop, eps_init))
            taken = stop
    bar.close()
    failed = int((~success).sum())
    if failed:
        log.warning("%d of %d samples still correctly classified after %d doublings "
                    "(eps up to %g)", failed, n, max_doublings, eps_init * 2 ** max_doublings)
    return AttackResult(x_adv=x_adv, y_adv=y_adv, eps=eps_out, success=success,
                        model_calls=calls)


def _check_args(x: torch.Tensor, y: torch.Tensor, norm: str, eps_init: float, steps: int,
                step_ratio: float, max_doublings: int, batch_size: int) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not x.is_floating_point():
        raise ValueError(f"x must be float images in [0, 1], got dtype {x.dtype}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if not eps_init > 0 or not step_ratio > 0:
        raise ValueError(f"eps_init and step_ratio must be > 0, got {eps_init}, {step_ratio}")
    if steps < 1 or max_doublings < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, max_doublings >= 0, batch_size >= 1; got {steps}, "
                         f"{max_doublings}, {batch_size}")


def _run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> AttackResult:
    # inference_mode(False): a caller inside inference_mode would otherwise get no input gradient.
    with _frozen_eval(model), torch.inference_mode(False), torch.enable_grad():
        return _attack(model, x.clone(), y.clone(), **kwargs)


def pgd_doubling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                 eps_init: float, steps: int, step_ratio: float = 0.1, max_doublings: int,
                 batch_size: int) -> AttackResult:
    """AMUN's adversarial example per sample: PGD-`steps` (step step_ratio * eps, no random start)
    in the `norm` eps-ball, eps doubled from `eps_init` until the model is fooled (at most
    `max_doublings` times). Freezes each sample at its first misclassified iterate.
    Paper setting: L2, steps 50, step_ratio 0.1; cost target model_calls / len(x) < 150."""
    return _run(model, x, y, norm=norm, eps_init=eps_init, steps=steps, step_ratio=step_ratio,
                max_doublings=max_doublings, batch_size=batch_size)


def fgsm_doubling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                  eps_init: float, max_doublings: int, batch_size: int) -> AttackResult:
    """The weaker one-step alternative to `pgd_doubling`: per radius one step of size eps (L2: the
    unit-normalized gradient times eps; Linf: eps * sign), continuing from the current iterate,
    with the same projection, doubling and freezing rules. Costs at most max_doublings + 2 calls
    per sample."""
    return _run(model, x, y, norm=norm, eps_init=eps_init, steps=1, step_ratio=1.0,
                max_doublings=max_doublings, batch_size=batch_size)


def auto_eps_init(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, base: float,
                  quantile: float = 0.95, **attack_kwargs) -> float:
    """AMUN's choice of eps_init: the smallest base * 2^k (k >= 0) such that at least `quantile`
    of the samples are adversarial within radius base * 2^k.

    The paper picks eps_init so that at least 95% of about 100 forget samples succeed within it;
    the caller passes that subsample. Runs `pgd_doubling(eps_init=base, **attack_kwargs)` once;
    since each found eps is 0 or base * 2^k, the answer is read off the sorted eps values.
    Samples misclassified already count as successes, samples never flipped as failures.
    Raises ValueError when fewer than `quantile` succeed within max_doublings.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if len(x) == 0:
        raise ValueError("auto_eps_init needs at least one sample")
    res = pgd_doubling(model, x, y, eps_init=base, **attack_kwargs)
    found = torch.where(res.success, res.eps.double(), torch.full_like(res.eps.double(), math.inf))
    needed = math.ceil(quantile * len(x) - 1e-9)  # samples that must succeed
    radius = float(found.sort().values[needed - 1])
    if math.isinf(radius):
        raise ValueError(f"only {int(res.success.sum())} of {len(x)} samples flip within "
                         f"{base} * 2^{attack_kwargs.get('max_doublings')}; need {needed}: "
                         f"raise base or max_doublings")
    # round(): eps is stored in x's dtype, so radius / base is 2^k only up to rounding.
    k = max(0, round(math.log2(radius / base))) if radius > 0 else 0
    return base * 2.0 ** k


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
        steps: int, step_ratio: float, batch_size: int) -> torch.Tensor:
    """Plain untargeted PGD for robustness: `steps` ascent steps of size step_ratio * eps on the
    cross-entropy, projected onto the `norm` eps-ball around x and clamped to [0, 1], no random
    start and no early stop; returns the last iterate (robust accuracy is accuracy on it). LOTOS
    evaluates robustness and transferability with L_inf eps 0.04, 50 steps; its step size is not
    stated, step_ratio is our setting (conf: ensemble.attack)."""
    _check_args(x, y, norm, eps, steps, step_ratio, 0, batch_size)
    out = []
    with _frozen_eval(model), torch.inference_mode(False), torch.enable_grad():
        for start in range(0, len(x), batch_size):
            stop = min(len(x), start + batch_size)
            pool = _new_pool(x.detach(), y, start, stop, eps)
            for _ in range(steps):
                x_in = pool.x_t.requires_grad_(True)
                loss = F.cross_entropy(model(x_in).float(), pool.y, reduction="sum")
                grad, = torch.autograd.grad(loss, x_in)
                pool.x_t = _pgd_step(pool, grad, norm, step_ratio)
            out.append(pool.x_t.detach())
    return torch.cat(out)
