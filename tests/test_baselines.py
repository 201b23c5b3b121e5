"""BS, l1-sparse, SalUn (and GA and BE's pass order): the pieces each paper defines, checked against
independent computations, and the AMUN code's behaviour pinned where our variant differs."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from data.loader import Augment, to_float
from methods import be, bs, ft, ga, l1_sparse, salun
from methods.common import random_label_stream
from runner.config import ConfigError, validate

from tiny import HP, linear_model, tiny_data

EXTRA = {bs: dict(bound=0.1, labels="epoch_copy", retain_pass="before"),
         l1_sparse: dict(alpha=5e-4, alpha_schedule="compounding"),
         salun: dict(ratio=0.5, mask_accumulation="batch_mean"),
         ga: dict(retain_pass="before"), be: dict(retain_pass="before")}
# Our variants, kept as named options (each YAML's default is the AMUN code's behaviour).
OURS = {bs: dict(labels="original", retain_pass="after"), l1_sparse: dict(alpha_schedule="linear"),
        salun: dict(mask_accumulation="exact"), ga: dict(retain_pass="after"),
        be: dict(retain_pass="after")}
_data, _linear = tiny_data, linear_model


def _bn_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _changed(a, b):
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("method,use_retain", [(bs, True), (bs, False), (l1_sparse, True),
                                               (salun, True), (salun, False)])
@pytest.mark.parametrize("variant", ["official", "ours"])
def test_method_changes_the_model_and_returns_it_in_eval_mode(method, use_retain, variant):
    original = _bn_mlp()
    extra = {**EXTRA[method], **(OURS[method] if variant == "ours" else {})}
    out = method.unlearn(copy.deepcopy(original).train(), _data(use_retain), **HP, **extra)
    assert _changed(out, original)
    assert not out.training


def test_l1_sparse_needs_the_retain_set(make_cfg):
    assert l1_sparse.unlearn.needs_retain
    assert not hasattr(bs.unlearn, "needs_retain") and not hasattr(salun.unlearn, "needs_retain")
    with pytest.raises(ValueError, match="l1_sparse needs the retain set"):
        l1_sparse.unlearn(_linear(), _data(use_retain=False), **HP, **EXTRA[l1_sparse])
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
    mask = salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=ratio, batch_size=5,
                               accumulation="exact")
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
    salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=0.5, batch_size=7,
                            accumulation="exact")
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="ratio"):
        salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=1.5, batch_size=7,
                            accumulation="exact")


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
                               batch_size=HP["batch_size"], accumulation="exact")
    steps = len(random_label_stream(data, HP["batch_size"]))
    out = salun.unlearn(copy.deepcopy(original), data, **hp, ratio=0.3, mask_accumulation="exact")
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


def test_bs_labels_original_trains_on_the_originals_labels_at_the_fgsm_points(monkeypatch, caplog):
    bound = 0.3
    model, data = _linear(), _data(use_retain=False, augment=Augment())
    _, expected, clean_pred = _analytic_fgsm_labels(model, to_float(data.forget_x), data.forget_y,
                                                    bound)
    assert not torch.equal(expected, clean_pred)  # the FGSM step matters for this test to bite
    seen = {}
    monkeypatch.setattr(bs, "finetune", lambda m, stream, **kw: seen.update(stream=stream) or m)
    with caplog.at_level(logging.INFO, logger="methods.bs"):
        bs.unlearn(model, data, **HP, bound=bound, labels="original", retain_pass="before")
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
    with_r = bs.unlearn(_linear(), _data(use_retain=True), **HP, **EXTRA[bs])
    without = bs.unlearn(_linear(), _data(use_retain=False), **HP, **EXTRA[bs])
    assert _changed(with_r, without)


def _l1(model):
    return sum(p.abs().sum() for p in model.parameters()).item()


def test_l1_penalty_shrinks_the_weights_compared_with_plain_ft():
    data = _data()
    plain = ft.unlearn(_linear(), data, **HP)
    sparse = l1_sparse.unlearn(_linear(), data, **HP, alpha=0.05, alpha_schedule="linear")
    assert _l1(sparse) < 0.9 * _l1(plain)


def test_l1_alpha_linear_decays_linearly_to_zero():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -2.0]]))
        model.bias.zero_()  # sign(0) = 0: no push on a zero weight
    hook = l1_sparse.l1_hook(alpha=1.0, steps_per_epoch=1, epochs=5, schedule="linear")
    added = []
    for _ in range(7):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hook(model)
        assert torch.equal(model.bias.grad, torch.zeros(1))
        assert model.weight.grad[0, 1] == -model.weight.grad[0, 0]
        added.append(model.weight.grad[0, 0].item())
    assert added == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0])


@pytest.mark.parametrize("schedule", ["compounding", "linear"])
def test_l1_schedule_spans_exactly_the_run(monkeypatch, schedule):
    # Record alpha_t as the hook applies it inside the real run: one value per optimizer step, and
    # nothing left after the run. 72 retain samples in batches of 16: 5 steps an epoch, 2 epochs.
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
    model = l1_sparse.unlearn(_linear(), _data(), **HP, alpha=1.0, alpha_schedule=schedule)
    total = HP["epochs"] * 5
    expected = {"compounding": [1.0] * 5 + [2.0] * 5,  # x (2 - 2 * 0 / 2) after epoch 0
                "linear": [1.0 - t / total for t in range(total)]}[schedule]
    assert alphas == pytest.approx(expected, rel=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hooks[0](model)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_l1_alpha_compounds_per_epoch_as_the_amun_code():
    # The AMUN code: after epoch e, alpha_l1 = (2 - 2 e / E) * alpha_l1. By hand, E = 10:
    # 1, 2, 2 * 1.8, 3.6 * 1.6, 5.76 * 1.4, 8.064 * 1.2, 9.6768 * 1.0, * 0.8, * 0.6, * 0.4.
    by_hand = [1.0, 2.0, 3.6, 5.76, 8.064, 9.6768, 9.6768, 7.74144, 4.644864, 1.8579456]
    got = [l1_sparse.alpha_at(e * 3 + k, alpha=1.0, steps_per_epoch=3, epochs=10,
                              schedule="compounding") for e in range(10) for k in range(3)]
    assert got == pytest.approx([a for a in by_hand for _ in range(3)])
    assert l1_sparse.alpha_at(30, alpha=1.0, steps_per_epoch=3, epochs=10,
                              schedule="compounding") == 0.0
    linear = [l1_sparse.alpha_at(t, alpha=1.0, steps_per_epoch=3, epochs=10, schedule="linear")
              for t in range(30)]
    assert sum(got) / sum(linear) == pytest.approx(5.4021849600 / 0.5166666667, rel=1e-6)


def _batch_sources(stream, data):
    """'R' or 'F' for each batch of one epoch of `stream` (un-augmented data): whether its
    first image is a retain or a forget image."""
    forget = to_float(data.forget_x).flatten(1)
    out = []
    for x, _, _ in stream:
        out.append("F" if (x[:1].flatten(1) == forget).all(1).any() else "R")
    return "".join(out)


@pytest.mark.parametrize("method", [ga, bs, be])
@pytest.mark.parametrize("retain_pass", ["before", "after"])
def test_with_retain_each_epoch_runs_the_retain_pass_where_asked(monkeypatch, method,
                                                                  retain_pass):
    # The AMUN code (before): a descent pass over D_R, then the forget pass, so every epoch ends
    # on the forget update. 72 retain samples and 24 forget samples in batches of 16.
    data = _data(use_retain=True, augment=Augment())
    seen = {}
    monkeypatch.setattr(method, "finetune", lambda m, stream, **kw: seen.update(stream=stream) or m)
    model = _linear()
    if method is be:
        model = torch.nn.Sequential()  # BE swaps the model's fc: give it one
        model.add_module("flat", torch.nn.Flatten())
        model.add_module("fc", _linear()[1])
    method.unlearn(model, data, **HP, **{**EXTRA[method], "retain_pass": retain_pass})
    order = _batch_sources(seen["stream"], data)
    assert order == ("RRRRRFF" if retain_pass == "before" else "FFRRRRR")
    signs = [s for _, _, s in seen["stream"]]
    if method is ga:
        assert signs == ([1.0] * 5 + [-1.0] * 2 if retain_pass == "before" else [-1.0] * 2 + [1.0] * 5)


def test_ga_pass_order_changes_the_result():
    before = ga.unlearn(_linear(), _data(use_retain=True), **HP, retain_pass="before")
    after = ga.unlearn(_linear(), _data(use_retain=True), **HP, retain_pass="after")
    assert _changed(before, after)


def _fgsm_labels_by_hand(model, x, y, bound):
    """A linear model's prediction at its rounded FGSM point: grad_x CE = (softmax - onehot) W."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    grad = (torch.softmax(flat @ w.T + b, 1) - F.one_hot(y, 3).float()) @ w
    x_adv = torch.round((flat + bound * grad.sign()).clamp(0, 1) * 255) / 255
    return (x_adv @ w.T + b).argmax(1)


def test_bs_epoch_copy_labels_each_augmented_batch_by_a_copy_taken_after_the_retain_pass(
        monkeypatch):
    # The AMUN code: each epoch, the D_R pass, then a fresh frozen copy of the live model labels
    # every AUGMENTED forget batch at its FGSM point rounded to the 1/255 grid. The fake training
    # loop below moves the model after every batch, retain batches included; the labels must
    # follow the model as it was when the forget pass began.
    bound = 0.25  # 63.75 / 255: the rounding moves every pixel
    data = _data(use_retain=True, augment=Augment(crop_pad=1, flip=True))
    data.forget_y = torch.zeros_like(data.forget_y)  # every true label known: 0
    g = torch.Generator().manual_seed(5)
    records = []

    def fake_finetune(model, stream, **kw):
        for _ in range(3):  # 5 retain batches (72 samples), then 2 forget batches (24)
            for i, (x, y, _) in enumerate(stream):
                if i == 5:
                    at_forget_pass = copy.deepcopy(model)
                if i >= 5:
                    records.append((at_forget_pass, x, y))
                with torch.no_grad():
                    model[1].weight.add_(torch.randn(model[1].weight.shape, generator=g) * 3)
        return model

    monkeypatch.setattr(bs, "finetune", fake_finetune)
    bs.unlearn(_linear(), data, **HP, bound=bound, labels="epoch_copy", retain_pass="before")
    assert len(records) == 6
    for frozen, x, y in records:
        assert torch.equal(y, _fgsm_labels_by_hand(frozen, x, torch.zeros_like(y), bound))
    first_epoch_labels = torch.cat([y for _, _, y in records[:2]])
    later = torch.cat([y for _, _, y in records[4:]])
    assert not torch.equal(first_epoch_labels, later)  # the copy changed between epochs
    # The batches are labelled as augmented: most rows are no un-augmented forget image.
    images = to_float(data.forget_x).flatten(1)
    rows = torch.cat([x for _, x, _ in records]).flatten(1)
    plain = (rows[:, None] == images[None]).all(-1).any(1)
    assert plain.sum() < len(rows) / 2


def test_fgsm_quantize_rounds_to_the_8_bit_grid():
    model, data = _linear(), _data()
    x = to_float(data.forget_x)
    raw = bs.fgsm(model, x, data.forget_y, bound=0.25)
    grid = bs.fgsm(model, x, data.forget_y, bound=0.25, quantize=True)
    assert torch.equal(grid * 255, torch.round(grid * 255))
    assert (grid - raw).abs().max() <= 0.5 / 255 + 1e-7
    assert not torch.equal(grid, raw)


def _mask_by_hand(model, data, ratio, batch_size, mean):
    """Top-ratio mask of |sum over in-order batches of grad CE| (mean or summed per batch)."""
    model = copy.deepcopy(model).eval()
    x = to_float(data.forget_x)
    for i in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(x[i:i + batch_size]), data.forget_y[i:i + batch_size],
                               reduction="mean" if mean else "sum")
        loss.backward()
    scores = torch.cat([p.grad.abs().flatten() for p in model.parameters()])
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, round(ratio * len(scores))).indices] = True
    return keep


def test_salun_batch_mean_mask_sums_per_batch_mean_gradients():
    # The AMUN / SalUn code: per-batch MEAN losses summed over the forget batches, so the last
    # batch (8 of 24 samples, batches of 16) weighs twice as much per sample; exact does not.
    model, data = _bn_mlp(), _data(augment=Augment())
    flat = lambda m: torch.cat([v.flatten() for v in m.values()])
    batch_mean = flat(salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=0.3,
                                          batch_size=16, accumulation="batch_mean",
                                          augment=data.augment))
    exact = flat(salun.saliency_mask(model, data.forget_x, data.forget_y, ratio=0.3,
                                     batch_size=16, accumulation="exact"))
    assert torch.equal(batch_mean, _mask_by_hand(model, data, 0.3, 16, mean=True))
    assert torch.equal(exact, _mask_by_hand(model, data, 0.3, 16, mean=False))
    assert not torch.equal(batch_mean, exact)


def test_salun_batch_mean_mask_takes_augmented_batches_seeded_by_the_run():
    model = _bn_mlp()
    flat = lambda m: torch.cat([v.flatten() for v in m.values()])
    plain = flat(salun.data_mask(model, _data(augment=Augment()), ratio=0.3, batch_size=16,
                                 accumulation="batch_mean"))
    augmented = [flat(salun.data_mask(model, _data(augment=Augment(crop_pad=1, flip=True)),
                                      ratio=0.3, batch_size=16, accumulation="batch_mean"))
                 for _ in range(2)]
    assert torch.equal(augmented[0], augmented[1])  # the same run seed: the same crops and flips
    assert not torch.equal(plain, augmented[0])
    exact = [flat(salun.data_mask(model, _data(augment=a), ratio=0.3, batch_size=16,
                                  accumulation="exact"))
             for a in (Augment(), Augment(crop_pad=1, flip=True))]
    assert torch.equal(exact[0], exact[1])  # exact never augments


@pytest.mark.parametrize("override,message", [
    ("method=bs method.labels=once", "method.labels must be one of epoch_copy, original"),
    ("method=ga method.retain_pass=first", "method.retain_pass must be one of before, after"),
    ("method=l1_sparse method.alpha_schedule=cosine",
     "method.alpha_schedule must be one of compounding, linear"),
    ("method=salun method.mask_accumulation=mean",
     "method.mask_accumulation must be one of batch_mean, exact"),
    ("method=amun_salun method.salun_accumulation=sum",
     "method.salun_accumulation must be one of batch_mean, exact"),
])
def test_a_wrong_variant_name_fails_validation_with_the_choices(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*override.split()))


@pytest.mark.parametrize("method,key,value", [
    ("ga", "retain_pass", "before"), ("bs", "retain_pass", "before"), ("be", "retain_pass", "before"),
    ("bs", "labels", "epoch_copy"), ("l1_sparse", "alpha_schedule", "compounding"),
    ("salun", "mask_accumulation", "batch_mean"), ("amun_salun", "salun_accumulation", "batch_mean"),
])
def test_the_amun_codes_behaviour_is_the_default(make_cfg, method, key, value):
    assert make_cfg(f"method={method}").method[key] == value


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
