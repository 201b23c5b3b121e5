"""BS, l1-sparse and SalUn: the pieces each paper defines, checked against independent computations."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from data.loader import Augment, to_float
from methods import bs, ft, l1_sparse, salun
from methods.common import random_label_stream
from runner.config import ConfigError, validate

from tiny import HP, linear_model, tiny_data

EXTRA = {bs: dict(bound=0.1), l1_sparse: dict(alpha=5e-4), salun: dict(ratio=0.5)}
_data, _linear = tiny_data, linear_model


def _bn_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _changed(a, b):
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("method,use_retain", [(bs, True), (bs, False), (l1_sparse, True),
                                               (salun, True), (salun, False)])
def test_method_changes_the_model_and_returns_it_in_eval_mode(method, use_retain):
    original = _bn_mlp()
    out = method.unlearn(copy.deepcopy(original).train(), _data(use_retain), **HP, **EXTRA[method])
    assert _changed(out, original)
    assert not out.training


def test_l1_sparse_needs_the_retain_set(make_cfg):
    assert l1_sparse.unlearn.needs_retain
    assert not hasattr(bs.unlearn, "needs_retain") and not hasattr(salun.unlearn, "needs_retain")
    with pytest.raises(ValueError, match="l1_sparse needs the retain set"):
        l1_sparse.unlearn(_linear(), _data(use_retain=False), **HP, alpha=5e-4)
    with pytest.raises(ConfigError, match="needs the retain set"):
        validate(make_cfg("method=l1_sparse", "method.use_retain=false"))
    for name in ("bs", "salun"):
        validate(make_cfg(f"method={name}", "method.use_retain=false"))


def _reference_forget_grad(model, data):
    """|d/dtheta sum CE| over all of D_F in one eval-mode batch, via .backward (not autograd.grad)."""
    model = copy.deepcopy(model).eval()
    F.cross_entropy(model(to_float(data.forget_x)), data.forget_y, reduction="sum").backward()
    return {n: p.grad.abs() for n, p in model.named_parameters()}


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_saliency_mask_keeps_exactly_the_top_fraction(ratio):
    model, data = _bn_mlp(), _data()
    mask = salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=ratio, batch_size=5)
    ref = _reference_forget_grad(model, data)
    assert mask.keys() == ref.keys()
    assert all(m.dtype == torch.bool and m.shape == ref[n].shape for n, m in mask.items())
    kept = torch.cat([ref[n][mask[n]] for n in ref])
    dropped = torch.cat([ref[n][~mask[n]] for n in ref])
    total = kept.numel() + dropped.numel()
    assert kept.numel() == round(ratio * total)
    assert kept.min() >= dropped.max() - 1e-6  # batched vs one-batch summation order


def test_saliency_mask_leaves_the_model_untouched():
    model, data = _bn_mlp().train(), _data()
    before = copy.deepcopy(model.state_dict())
    salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=0.5, batch_size=7)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="ratio"):
        salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=1.5, batch_size=7)


def test_mask_hook_zeroes_exactly_the_masked_out_entries():
    model = _bn_mlp()
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    g = torch.Generator().manual_seed(3)
    mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()
            if n != "4.bias"}  # one parameter left out of the mask
    salun.mask_hook(mask)(model)
    for n, p in model.named_parameters():
        m = mask.get(n, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p.grad[m], grads[n][m])
        assert torch.all(p.grad[~m] == 0)


def _zero_grad_sgd(p0, steps_per_epoch, weight_decay):
    """Where SGD with momentum, weight decay and our step schedule takes a tensor whose loss
    gradient is always zero."""
    q = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([q], lr=HP["lr"], momentum=HP["momentum"], weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, HP["decay_every"], HP["decay_gamma"])
    for _ in range(HP["epochs"]):
        for _ in range(steps_per_epoch):
            q.grad = torch.zeros_like(q)
            opt.step()
        sched.step()
    return q.detach()


@pytest.mark.parametrize("use_retain,weight_decay", [(True, 5e-4), (False, 5e-4), (True, 0.0)])
def test_salun_moves_masked_out_weights_only_by_weight_decay(use_retain, weight_decay):
    # Our choice (SalUn's code): the mask applies to the loss gradient; weight decay still acts,
    # so without it the masked-out weights stay exactly where they were.
    data, original, hp = _data(use_retain), _bn_mlp(), {**HP, "weight_decay": weight_decay}
    mask = salun.saliency_mask(original, data.forget_x, data.forget_y, ratio=0.3,
                               batch_size=HP["batch_size"])
    steps = len(random_label_stream(data, HP["batch_size"]))
    out = salun.unlearn(copy.deepcopy(original), data, **hp, ratio=0.3)
    params = dict(original.named_parameters())
    for n, p in out.named_parameters():
        frozen, p0 = ~mask[n], params[n].detach()
        if weight_decay == 0:
            assert torch.equal(p[frozen], p0[frozen])
        torch.testing.assert_close(p[frozen], _zero_grad_sgd(p0, steps, weight_decay)[frozen],
                                   rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(p[mask[n]], params[n][mask[n]]) for n, p in out.named_parameters())


def _analytic_fgsm_labels(model, x, y, bound):
    """FGSM on a linear model by hand: grad_x CE = (softmax(Wx + b) - onehot(y)) W."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    grad = (torch.softmax(flat @ w.T + b, 1) - F.one_hot(y, 3).float()) @ w
    x_adv = (flat + bound * grad.sign()).clamp(0, 1)
    return x_adv.view_as(x), (x_adv @ w.T + b).argmax(1), (flat @ w.T + b).argmax(1)


def test_fgsm_point_matches_a_hand_computation_and_stays_in_the_ball():
    model, data = _linear(), _data()
    x = to_float(data.forget_x)
    x_adv = bs.fgsm(model, x, data.forget_y, bound=0.1)
    expected, _, _ = _analytic_fgsm_labels(model, x, data.forget_y, 0.1)
    torch.testing.assert_close(x_adv, expected)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_bs_trains_on_the_frozen_models_labels_at_the_fgsm_points(monkeypatch, caplog):
    bound = 0.3
    model, data = _linear(), _data(use_retain=False, augment=Augment())
    _, expected, clean_pred = _analytic_fgsm_labels(model, to_float(data.forget_x), data.forget_y,
                                                    bound)
    assert not torch.equal(expected, clean_pred)  # the FGSM step matters for this test to bite
    seen = {}
    monkeypatch.setattr(bs, "finetune", lambda m, stream, **kw: seen.update(stream=stream) or m)
    with caplog.at_level(logging.INFO, logger="methods.bs"):
        bs.unlearn(model, data, **HP, bound=bound)
    images = to_float(data.forget_x).flatten(1)
    labels = torch.full_like(data.forget_y, -1)
    for x, y, sign in seen["stream"]:
        assert sign == 1.0
        idx = (x.flatten(1)[:, None] == images[None]).all(-1).float().argmax(1)
        labels[idx] = y
    assert torch.equal(labels, expected)  # on the ORIGINAL images, with the shrunk labels
    kept = int((expected == data.forget_y).sum())
    assert f"{kept} of 24 forget samples keep their label" in caplog.text


def test_bs_with_retain_adds_a_descent_pass_on_it():
    with_r = bs.unlearn(_linear(), _data(use_retain=True), **HP, bound=0.1)
    without = bs.unlearn(_linear(), _data(use_retain=False), **HP, bound=0.1)
    assert _changed(with_r, without)


def _l1(model):
    return sum(p.abs().sum() for p in model.parameters()).item()


def test_l1_penalty_shrinks_the_weights_compared_with_plain_ft():
    data = _data()
    plain = ft.unlearn(_linear(), data, **HP)
    sparse = l1_sparse.unlearn(_linear(), data, **HP, alpha=0.05)
    assert _l1(sparse) < 0.9 * _l1(plain)


def test_l1_alpha_decays_linearly_to_zero():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -2.0]]))
        model.bias.zero_()  # sign(0) = 0: no push on a zero weight
    hook = l1_sparse.l1_hook(alpha=1.0, total_steps=5)
    added = []
    for _ in range(7):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hook(model)
        assert torch.equal(model.bias.grad, torch.zeros(1))
        assert model.weight.grad[0, 1] == -model.weight.grad[0, 0]
        added.append(model.weight.grad[0, 0].item())
    assert added == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0])


def test_l1_schedule_spans_exactly_the_run(monkeypatch):
    # Record alpha_t as the hook applies it inside the real run: one value per optimizer step,
    # alpha * (1 - t / T) with T the run's step count, and nothing left after the run.
    alphas, hooks = [], []
    real = l1_sparse.finetune

    def spy(model, stream, **kw):
        hook = kw["grad_hook"]
        hooks.append(hook)

        def measuring(m):
            w = m[1].weight
            before = w.grad.clone()
            hook(m)
            alphas.append(((w.grad - before) / w.sign())[0, 0].item())

        return real(model, stream, **{**kw, "grad_hook": measuring})

    monkeypatch.setattr(l1_sparse, "finetune", spy)
    model = l1_sparse.unlearn(_linear(), _data(), **HP, alpha=1.0)
    total = HP["epochs"] * 5  # 72 retain samples in batches of 16
    assert alphas == pytest.approx([1.0 - t / total for t in range(total)], rel=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hooks[0](model)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())



def test_be_expand_and_prune_keep_the_real_rows():
    from methods.be import _expand, _prune

    fc = linear_model()[1]
    wide = _expand(fc)
    assert wide.out_features == 4
    torch.testing.assert_close(wide.weight[:3], fc.weight)
    torch.testing.assert_close(wide.bias[:3], fc.bias)
    back = _prune(wide)
    torch.testing.assert_close(back.weight, fc.weight)
    torch.testing.assert_close(back.bias, fc.bias)
    # A bias-free fc (airbench's) stays bias-free both ways.
    plain = torch.nn.Linear(5, 3, bias=False)
    wide = _expand(plain)
    assert wide.bias is None and torch.equal(wide.weight[:3], plain.weight)
    assert _prune(wide).bias is None and torch.equal(_prune(wide).weight, plain.weight)


def test_be_moves_the_forget_set_off_its_classes(make_cfg, tmp_path):
    from runner.__main__ import execute

    from conftest import FAST

    result = execute(make_cfg(*FAST, "method=be", "method.use_retain=false", "method.lr=0.05",
                              "method.epochs=3"), tmp_path / "a")
    m = result["metrics"]
    assert m["unlearned"]["forget_acc"] < m["original"]["forget_acc"] - 20
    assert result["n_forget"] == 144
