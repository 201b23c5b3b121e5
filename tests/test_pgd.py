"""AMUN's eps-doubling PGD (attacks/pgd.py): ball and box constraints, exact doubling on linear
models with known boundary distances, closed-form lower bounds, and the per-sample call count."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from attacks.pgd import auto_eps_init, fgsm_doubling, pgd_doubling
from data.datasets import load

D = 16  # linear toy: 16 pixels (1x4x4); its boundary normal u = ones / 4 is a unit vector


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: a second intra-op thread only adds barrier waits (10x slower on a
    loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_cnn():
    """A tiny CNN trained briefly on 8x8 digits, in float64 so a re-evaluation in another batch
    composition cannot flip a near-tied argmax; returns (model, x, y) on 64 test digits."""
    data = load("digits", root=None)
    x, y = data.train_x.double() / 255, data.train_y
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(150):
        b = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad()  # the attack tests check that no parameter gradient appears
    return model.eval(), data.test_x[:64].double() / 255, data.test_y[:64]


def _two_class(norm: str, dists: list[float]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Class 1 iff u.x > u.0.5 with u = ones / 4; samples of class 0 at `dists` from the boundary
    in the given norm (moving along v = the steepest direction of that norm: u for L2, sign(u) for
    Linf), so PGD walks straight at the boundary and flips exactly when it has moved past dist."""
    u = torch.full((D,), 0.25)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(D), u]))
        model[1].bias.copy_(torch.tensor([0.0, -float(u @ torch.full((D,), 0.5))]))
    v = u if norm == "l2" else u.sign()
    x = torch.stack([0.5 - d * v for d in dists]).view(-1, 1, 4, 4)
    return model, x, torch.zeros(len(dists), dtype=torch.long)


def _dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    return (a - b).flatten(1).norm(p=2 if norm == "l2" else math.inf, dim=1)


class RowCounter(nn.Module):
    """Counts the samples the wrapped model is evaluated on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


ATTACKS = {"pgd": lambda m, x, y, **kw: pgd_doubling(m, x, y, steps=20, **kw),
           "fgsm": fgsm_doubling}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("norm,eps_init", [("l2", 0.25), ("linf", 0.02)])
def test_outputs_in_ball_box_and_misclassified(digits_cnn, attack, norm, eps_init):
    model, x, y = digits_cnn
    model.train()  # the attack must switch to eval and switch back
    res = ATTACKS[attack](model, x, y, norm=norm, eps_init=eps_init, max_doublings=8,
                          batch_size=16)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert res.x_adv.shape == x.shape and res.y_adv.dtype == torch.long
    assert (_dist(res.x_adv, x, norm) <= res.eps + 1e-5).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        pred = model.eval()(res.x_adv).argmax(1)
    assert torch.equal(pred, res.y_adv)
    assert torch.equal(res.success, res.y_adv != y)
    assert res.success.float().mean() > 0.9  # the properties above are not vacuous
    k = torch.log2(res.eps[res.eps > 0] / eps_init)
    assert torch.allclose(k, k.round(), atol=1e-6) and (k >= 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_doubles_exactly_as_often_as_needed(norm):
    # eps_init 0.1: dist 0.055 flips in the first ball, 0.155 needs 0.2, 0.31 and 0.35 need 0.4.
    model, x, y = _two_class(norm, [0.055, 0.155, 0.31, 0.35])
    res = pgd_doubling(model, x, y, norm=norm, eps_init=0.1, steps=20, max_doublings=5,
                       batch_size=3)
    assert res.success.all()
    assert torch.equal(res.eps, torch.tensor([0.1, 0.2, 0.4, 0.4]))
    # Iterates checked: 0..6 of round 0; 20 + 4 (3 steps of 0.02 from 0.1); 40 + 4 and 40 + 5
    # (3 and 4 steps of 0.04 from 0.2).
    assert res.model_calls == 7 + 24 + 44 + 45


def test_fgsm_doubles_and_continues_from_the_iterate():
    # One step of size eps per radius: 0.155 is not passed at eps 0.1, then 0.1 + 0.2 -> 0.2.
    model, x, y = _two_class("l2", [0.055, 0.155])
    res = fgsm_doubling(model, x, y, norm="l2", eps_init=0.1, max_doublings=3, batch_size=2)
    assert torch.equal(res.eps, torch.tensor([0.1, 0.2])) and res.model_calls == 2 + 3


def test_two_class_l2_eps_brackets_the_closed_form_distance():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 2))
    w = model[1].weight.detach()
    with torch.no_grad():  # boundary through the centre of the box
        model[1].bias.copy_(-(w @ torch.full((32,), 0.5)))
    # Points at 0.02..0.08 from the boundary on either side, well inside the box (no clamping).
    u = (w[1] - w[0]) / (w[1] - w[0]).norm()
    side = torch.where(torch.rand(40) < 0.5, -1.0, 1.0)
    noise = 0.1 * (torch.rand(40, 32) - 0.5)
    noise -= (noise @ u)[:, None] * u
    x = (0.5 + noise + (side * (0.02 + 0.06 * torch.rand(40)))[:, None] * u).view(40, 1, 4, 8)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    dist = (logits[:, 1] - logits[:, 0]).abs() / (w[1] - w[0]).norm()
    res = pgd_doubling(model, x, y, norm="l2", eps_init=0.015, steps=20, max_doublings=4,
                       batch_size=16)
    assert res.success.all() and (res.eps > 0).all()
    assert (res.eps >= dist).all() and (res.eps < 2 * dist).all()
    assert (_dist(res.x_adv, x, "l2") >= dist - 1e-5).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_multiclass_eps_is_at_least_the_distance_to_the_nearest_boundary(norm):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 5))
    w, b = model[1].weight.detach(), model[1].bias.detach()
    x = torch.rand(40, 1, 4, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    gap_w = w[y][:, None, :] - w[None]                     # (n, k, d): w_y - w_j
    margin = (gap_w @ x.flatten(1)[:, :, None]).squeeze(2) + b[y][:, None] - b[None]
    dual = gap_w.norm(p=1 if norm == "linf" else 2, dim=2)  # the dual norm of the attack's
    dist = torch.where(dual > 0, margin / dual.clamp_min(1e-12), math.inf).min(1).values
    res = pgd_doubling(model, x, y, norm=norm, eps_init=0.01, steps=50, max_doublings=10,
                       batch_size=8)
    assert res.success.all()
    assert (res.eps >= dist - 1e-6).all()
    assert (_dist(res.x_adv, x, norm) >= dist - 1e-5).all()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_frozen_samples_cost_one_call_and_keep_x(attack):
    model, x, y = _two_class("linf", [0.055, 0.155, 0.31, 0.35])
    counted = RowCounter(model)
    kw = dict(norm="linf", eps_init=0.1, max_doublings=5, batch_size=3)
    alone = ATTACKS[attack](counted, x, y, **kw)
    assert counted.rows == alone.model_calls
    # Interleave four samples the model gets wrong already (label 1 on class-0 points).
    x_mix = torch.stack([x, x], 1).view(8, 1, 4, 4)
    y_mix = torch.stack([y, 1 - y], 1).view(8)
    counted.rows = 0
    mixed = ATTACKS[attack](counted, x_mix, y_mix, **kw)
    assert counted.rows == mixed.model_calls == alone.model_calls + 4
    wrong = y_mix == 1
    assert torch.equal(mixed.x_adv[wrong], x_mix[wrong]) and (mixed.eps[wrong] == 0).all()
    assert mixed.success.all() and torch.equal(mixed.y_adv[wrong], torch.zeros(4).long())
    assert torch.equal(mixed.eps[~wrong], alone.eps)


def test_unflippable_samples_fail_after_max_doublings(caplog):
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 3))
    with torch.no_grad():  # constant logits: zero input gradient, prediction always class 0
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    x, y = torch.rand(5, 1, 4, 4), torch.zeros(5, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="attacks.pgd"):
        res = pgd_doubling(model, x, y, norm="l2", eps_init=0.1, steps=4, max_doublings=3,
                           batch_size=2)
    assert not res.success.any() and torch.equal(res.y_adv, y)
    assert torch.equal(res.x_adv, x) and torch.allclose(res.eps, torch.full((5,), 0.8))
    assert res.model_calls == 5 * (4 * 4 + 1)
    assert "5 of 5" in caplog.text


def test_auto_eps_init_on_known_distances():
    # 19 of 20 flip within 0.4 (= 0.1 * 2^2), the last needs 0.8: the 95% radius is 0.4.
    model, x, y = _two_class("l2", [0.055] * 10 + [0.31] * 9 + [0.7])
    kw = dict(norm="l2", steps=20, max_doublings=5, batch_size=8)
    assert auto_eps_init(model, x, y, base=0.1, **kw) == pytest.approx(0.4)
    assert auto_eps_init(model, x, y, base=0.1, quantile=1.0, **kw) == pytest.approx(0.8)
    assert auto_eps_init(model, x, y, base=0.1, quantile=0.5, **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="flip within"):
        auto_eps_init(model, x, y, base=0.1, quantile=1.0, **{**kw, "max_doublings": 2})


def test_auto_eps_init_is_the_smallest_power_of_two_covering_the_quantile(digits_cnn):
    model, x, y = digits_cnn
    kw = dict(norm="l2", steps=20, max_doublings=10, batch_size=32)
    base = 0.01
    eps_init = auto_eps_init(model, x, y, base=base, **kw)
    k = math.log2(eps_init / base)
    assert k == round(k) and k >= 1  # base was small enough for the minimality check to bite
    res = pgd_doubling(model, x, y, eps_init=base, **kw)
    covered = lambda r: float((res.success & (res.eps <= r * (1 + 1e-6))).float().mean())
    assert covered(eps_init) >= 0.95 and covered(eps_init / 2) < 0.95
