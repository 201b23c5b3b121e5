"""NegGrad+, SSD, Bad Teacher, UNSIR, CF-k and EU-k: each method's own invariants, on tiny data."""

import copy

import pytest
import torch
import torch.nn.functional as F

from data.loader import Augment, Batches, Zip
from methods import bad_teacher, cf_k, eu_k, ft, neggrad_plus, ssd, unsir
from methods.common import reinitialize
from models.resnet import ResNet18
from runner.config import ConfigError, validate

from tiny import HP, linear_model, tiny_data

PLAIN = Augment(crop_pad=0, flip=False)
GOEL = dict(lr=0.05, min_lr=0.005, momentum=0.9, weight_decay=5e-5, batch_size=16, clip_norm=10.0)


def _resnet():
    torch.manual_seed(0)
    return ResNet18(num_classes=3, in_channels=1, image_size=6, mean=[0.5], std=[0.25], width=2)


def _bn_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _class_data(use_retain=True):
    """A learnable tiny class split: 3 classes of 32 noisy 6x6 copies of a prototype image each;
    the forget set is all of class 0."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 1, 6, 6, generator=g) * 255
    y = torch.arange(3).repeat_interleave(32)
    x = (protos[y] + 40 * torch.randn(96, 1, 6, 6, generator=g)).clamp(0, 255).to(torch.uint8)
    data = tiny_data(use_retain)
    f = y == 0
    data.forget_x, data.forget_y = x[f], y[f]
    data.retain_x, data.retain_y = (x[~f], y[~f]) if use_retain else (None, None)
    return data


@pytest.mark.parametrize("method", ["neggrad_plus", "ssd", "bad_teacher", "unsir", "cf_k", "eu_k"])
def test_every_method_refuses_a_run_without_the_retain_set(make_cfg, method):
    extra = ["forget=class", "forget.class_id=1"] if method == "unsir" else []
    validate(make_cfg(f"method={method}", *extra))
    with pytest.raises(ConfigError, match="needs the retain set"):
        validate(make_cfg(f"method={method}", "method.use_retain=false", *extra))


# -- NegGrad+ ------------------------------------------------------------------------------------

def test_zip_runs_one_pass_of_the_first_stream_and_restarts_the_second():
    a = Batches(torch.arange(10), torch.arange(10), batch_size=2, shuffle=False, seed=0)
    b = Batches(torch.arange(5), torch.arange(5), batch_size=3, shuffle=True, seed=0)
    steps = list(Zip(a, b))
    assert len(Zip(a, b)) == len(steps) == 5
    assert torch.cat([ya for _, (ya, _), _ in steps]).tolist() == list(range(10))
    # b: 2 batches an epoch (5 samples), so steps 0-1, 2-3 and 4 are its epochs 1, 2 and 3
    seen = [sorted(torch.cat([steps[i][1][1] for i in e]).tolist()) for e in ((0, 1), (2, 3))]
    assert seen == [list(range(5))] * 2


@pytest.mark.parametrize("make", [linear_model, _bn_mlp])
def test_neggrad_plus_at_alpha_one_is_ft_on_the_same_stream(make):
    data = tiny_data()
    a = ft.unlearn(make(), data, **HP)
    b = neggrad_plus.unlearn(make(), data, alpha=1.0, forget_batch_size=8, **HP)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_batch_norm_recomputed_on_a_zip_sees_both_streams():
    from runner.train import recompute_batch_norm

    model = _bn_mlp()
    data = tiny_data(augment=PLAIN)
    zipped = Zip(data.stream(data.retain_x, data.retain_y, 100),
                 data.stream(data.forget_x, data.forget_y, 100, salt=1))
    recompute_batch_norm(model, zipped)  # one step: a retain batch of 72 and a forget batch of 24
    with torch.no_grad():
        h = [model[1](x.float().flatten(1) / 255) for x in (data.retain_x, data.forget_x)]
    torch.testing.assert_close(model[2].running_mean, (h[0].mean(0) + h[1].mean(0)) / 2)


def test_neggrad_plus_below_alpha_one_raises_the_forget_loss():
    data = tiny_data(augment=PLAIN)
    x, y = data.forget_x.float() / 255, data.forget_y
    losses = []
    for alpha in (1.0, 0.5):
        model = neggrad_plus.unlearn(linear_model(), data, alpha=alpha, forget_batch_size=8, **HP)
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(x), y)))
    assert losses[1] > losses[0] + 0.1


# -- SSD -----------------------------------------------------------------------------------------

def test_dampen_by_hand():
    model = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 4.0]]))
    forget = {"weight": torch.tensor([[0.0, 5.0, 1.0, 30.0]])}
    whole = {"weight": torch.tensor([[1.0, 0.4, 1.0, 2.0]])}
    # selected where f > 10 g: entries 1 (5 > 4) and 3 (30 > 20); factors g / f = 0.08, 1 / 15
    picked = ssd.dampen(model, forget, whole, alpha=10.0, lam=1.0)
    assert picked == {"weight": 2}
    torch.testing.assert_close(model.weight, torch.tensor([[1.0, -2.0 * 0.08, 3.0, 4.0 / 15]]))
    # lambda = 100: the factors 8 and 6.7 are capped at 1, nothing moves
    before = model.weight.clone()
    ssd.dampen(model, forget, whole, alpha=10.0, lam=100.0)
    assert torch.equal(model.weight, before)


def test_importances_are_the_mean_squared_batch_gradients():
    model, data = _bn_mlp().eval(), tiny_data(augment=PLAIN)
    batches = Batches(data.forget_x, data.forget_y, batch_size=10, shuffle=False, seed=0)
    imp = ssd.importances(model, batches, len(batches))
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y, _ in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        for n, g in zip(expected, grads):
            expected[n] += g.square() / 3  # 24 samples in batches of 10: 3 batches
    for n in expected:
        torch.testing.assert_close(imp[n], expected[n])


def test_ssd_dampens_only_the_selected_parameters_and_never_scales_one_up():
    original, data = _bn_mlp(), tiny_data()
    out = ssd.unlearn(copy.deepcopy(original), data, alpha=2.0, lam=1.0, batch_size=16,
                      augment=False)
    # recompute the importances the method used (on the original, eval mode, un-augmented)
    ref = copy.deepcopy(original).eval()
    f = Batches(data.forget_x, data.forget_y, batch_size=16, shuffle=False, seed=0)
    d = Batches(torch.cat([data.retain_x, data.forget_x]), torch.cat([data.retain_y, data.forget_y]),
                batch_size=16, shuffle=False, seed=0)
    fi, gi = ssd.importances(ref, f, len(f)), ssd.importances(ref, d, len(d))
    moved = 0
    for (n, p), q in zip(original.named_parameters(), out.parameters()):
        chosen = fi[n] > 2.0 * gi[n]
        assert torch.equal(p[~chosen], q[~chosen]), n            # bit-identical
        assert (q[chosen].abs() <= p[chosen].abs()).all(), n     # dampened, never scaled up
        moved += int((q[chosen] != p[chosen]).sum())
    assert moved > 0
    for a, b in zip(original.buffers(), out.buffers()):
        assert torch.equal(a, b)  # no gradient step, no batch-norm update


# -- Bad Teacher ---------------------------------------------------------------------------------

def test_teacher_targets_take_the_random_teacher_on_forget_samples():
    good, bad = torch.randn(4, 3), torch.randn(4, 3)
    is_forget = torch.tensor([True, False, True, False])
    t = bad_teacher.teacher_targets(good, bad, is_forget, T=2.0)
    torch.testing.assert_close(t[is_forget], F.softmax(bad[is_forget] / 2, 1))
    torch.testing.assert_close(t[~is_forget], F.softmax(good[~is_forget] / 2, 1))


def test_bad_teacher_pulls_the_forget_outputs_onto_the_random_teachers():
    """With the forget set alone (retain_fraction 0) and long training, the student's forget
    predictions become the incompetent teacher's: the architecture re-initialized from the
    run's seed, not the original."""
    data, model = tiny_data(augment=PLAIN), linear_model()
    with torch.no_grad():
        model[1].weight.mul_(20)  # a confident original, far from a fresh initialization
    x = data.forget_x.float() / 255
    torch.manual_seed(5)
    random_teacher = reinitialize(copy.deepcopy(model)).eval()
    torch.manual_seed(5)
    out = bad_teacher.unlearn(copy.deepcopy(model), data, retain_fraction=0.0, temperature=1.0,
                              epochs=800, lr=0.05, weight_decay=0.0, batch_size=24)
    with torch.no_grad():
        p, q, r = (F.softmax(m(x), 1) for m in (out, random_teacher, model))
    assert (p - q).abs().max() < 0.03
    assert (r - q).abs().max() > 0.3  # the original was far from it


def test_bad_teacher_mixes_the_retain_fraction_in(monkeypatch):
    seen = []
    real = bad_teacher.teacher_targets
    monkeypatch.setattr(bad_teacher, "teacher_targets",
                        lambda g, b, f, T: seen.append(f.clone()) or real(g, b, f, T))
    data = tiny_data()
    bad_teacher.unlearn(linear_model(), data, retain_fraction=0.5, temperature=1.0, epochs=1,
                        lr=1e-4, weight_decay=0.0, batch_size=256)
    (flags,) = seen  # one batch: 24 forget + 36 of the 72 retain samples
    assert int(flags.sum()) == 24 and len(flags) == 24 + 36


# -- UNSIR ---------------------------------------------------------------------------------------

def test_unsir_refuses_random_forgetting_before_any_compute(make_cfg):
    with pytest.raises(ConfigError, match="forget=class"):
        validate(make_cfg("method=unsir", "forget=random"))
    validate(make_cfg("method=unsir", "forget=class", "forget.class_id=1"))


def test_unsir_refuses_sequential_requests(make_cfg):
    with pytest.raises(ConfigError, match="requests=2"):
        validate(make_cfg("method=unsir", "forget=class", "forget.class_id=1", "requests=2"))


def test_error_maximizing_noise_raises_the_class_loss_and_leaves_the_model():
    model = _resnet().eval()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    start = unsir.to_input(model, torch.randn(16, 1, 6, 6))
    noise = unsir.error_maximizing_noise(model, 1, (16, 1, 6, 6), epochs=2, steps=5, lr=0.1,
                                         reg=0.1)
    with torch.no_grad():
        ce = [float(F.cross_entropy(model(n), torch.full((16,), 1))) for n in (start, noise)]
    assert ce[1] > ce[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    # the noise lives in the normalized space: the model's input is z * std + mean
    torch.testing.assert_close(unsir.to_input(model, torch.zeros(1, 1, 1, 1)),
                               torch.full((1, 1, 1, 1), 0.5))


def test_unsir_retain_subset_takes_at_most_per_class_of_each_class():
    data = _class_data()
    x, y = unsir.retain_subset(data, 5)
    counts = torch.bincount(y, minlength=3).tolist()
    assert counts == [0, 5, 5] and len(x) == 10


def test_unsir_forgets_the_class():
    """A small ResNet that fits a learnable class split; after UNSIR (the paper's steps at a
    smaller noise batch) it misses most of the forgotten class, less of the others."""
    data = _class_data()
    torch.manual_seed(0)
    model = ResNet18(num_classes=3, in_channels=1, image_size=6, mean=[0.5], std=[0.25], width=4)
    x_all = torch.cat([data.forget_x, data.retain_x]).float() / 255
    y_all = torch.cat([data.forget_y, data.retain_y])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x_all), y_all).backward()
        opt.step()
    model.eval()
    fx, rx = data.forget_x.float() / 255, data.retain_x.float() / 255

    def acc(m, x, y):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    assert acc(model, fx, data.forget_y) == acc(model, rx, data.retain_y) == 1.0
    torch.manual_seed(0)
    out = unsir.unlearn(copy.deepcopy(model), data, noise_batch=64, noise_epochs=5, noise_steps=8,
                        noise_lr=0.1, noise_reg=0.1, retain_per_class=1000, impair_epochs=1,
                        impair_lr=0.02, repair_epochs=1, repair_lr=0.01, batch_size=32)
    assert acc(out, fx, data.forget_y) < 0.3 < acc(out, rx, data.retain_y)


def test_unsir_impairs_on_the_noise_and_repairs_on_retain_samples_only(monkeypatch):
    labels = []
    real_fit = unsir.fit
    monkeypatch.setattr(unsir, "fit", lambda model, batches, **kw: labels.append(
        torch.sort(batches.y).values) or real_fit(model, batches, **kw))
    data = _class_data()
    unsir.unlearn(_resnet(), data, noise_batch=10, noise_epochs=1, noise_steps=2, noise_lr=0.1,
                  noise_reg=0.1, retain_per_class=4, impair_epochs=1, impair_lr=0.02,
                  repair_epochs=1, repair_lr=0.01, batch_size=8)
    impair, repair = labels
    assert impair.tolist() == [0] * 10 + [1] * 4 + [2] * 4  # the noise, labelled with its class
    assert repair.tolist() == [1] * 4 + [2] * 4


# -- CF-k and EU-k -------------------------------------------------------------------------------

def test_last_layers_count_conv_and_linear_from_the_output():
    counted, norms = cf_k.last_layers(_resnet(), 3)
    assert counted == ["fc", "layer4.1.conv2", "layer4.1.conv1"]
    assert norms == ["layer4.1.bn2", "layer4.1.bn1"]
    with pytest.raises(ValueError, match="k = 40"):
        cf_k.last_layers(_resnet(), 40)


def _split(model, k):
    counted, norms = cf_k.last_layers(model, k)
    trained = tuple(n + "." for n in counted + norms)
    state = model.state_dict()
    return ({n for n in state if n.startswith(trained)}, {n for n in state if not n.startswith(trained)})


@pytest.mark.parametrize("method", [cf_k, eu_k])
def test_cf_k_and_eu_k_change_only_the_last_k_layers(method):
    original = _resnet()
    out = method.unlearn(copy.deepcopy(original), tiny_data(), k=3, epochs=2, **GOEL)
    trained, frozen = _split(original, 3)
    a, b = original.state_dict(), out.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in frozen)  # weights and batch-norm statistics
    assert all(not torch.equal(a[n], b[n]) for n in trained if n.endswith("weight"))
    assert not out.training and all(p.requires_grad for p in out.parameters())  # as they were


def test_cf_k_trains_a_model_as_it_trains_and_keeps_its_fixed_parameters():
    """airbench reads `self.training` at its root (test-time augmentation in eval mode) and keeps
    its batch-norm scales fixed: CF-k trains the last layers on the plain batch, in train mode,
    and neither unfreezes those scales nor leaves them trainable."""
    from models.airbench import AirbenchNet

    torch.manual_seed(0)
    model = AirbenchNet(num_classes=3, in_channels=1, image_size=16, mean=[0.5], std=[0.25],
                        widths=(4, 8, 8), tta=2)
    flags = [p.requires_grad for p in model.parameters()]
    assert not all(flags)
    data = tiny_data()
    data.forget_x = data.forget_x.repeat(1, 1, 3, 3)[:, :, :16, :16]
    data.retain_x = data.retain_x.repeat(1, 1, 3, 3)[:, :, :16, :16]
    rows = []
    hook = model.fc.register_forward_hook(lambda m, i, out: rows.append(len(out)))
    before = copy.deepcopy(model.state_dict())
    out = cf_k.unlearn(model, data, k=3, epochs=1, **GOEL)
    hook.remove()
    assert rows and max(rows) <= GOEL["batch_size"]  # no test-time augmented copies
    assert [p.requires_grad for p in out.parameters()] == flags
    fixed = [n for n, p in out.named_parameters() if not p.requires_grad]
    assert all(torch.equal(before[n], out.state_dict()[n]) for n in fixed)


def test_cf_k_refuses_a_clipped_model(make_cfg):
    with pytest.raises(ConfigError, match="model.clip"):
        validate(make_cfg("method=cf_k", "model=resnet18", "model.width=4", "model.clip=1.0",
                          "train.lookahead=null"))


def test_eu_k_reinitializes_the_counted_layers_from_the_runs_seed(monkeypatch):
    started = {}
    monkeypatch.setattr(eu_k, "retrain_last",
                        lambda model, data, trained, **kw: started.update(model.state_dict())
                        or model)
    original = _resnet()
    torch.manual_seed(3)
    eu_k.unlearn(copy.deepcopy(original), tiny_data(), k=3, epochs=1, **GOEL)
    a = original.state_dict()
    for name in ("fc", "layer4.1.conv2", "layer4.1.conv1"):
        w = started[name + ".weight"]
        assert not torch.equal(w, a[name + ".weight"])  # re-initialized
    # the counted layers are re-drawn, fc first (the walk's order); batch norms keep their values
    torch.manual_seed(3)
    expected = copy.deepcopy(original)
    for name in ("fc", "layer4.1.conv2", "layer4.1.conv1"):
        reinitialize(dict(expected.named_modules())[name])
    for n, v in expected.state_dict().items():
        assert torch.equal(started[n], v), n
    assert torch.equal(started["layer4.1.bn1.weight"], a["layer4.1.bn1.weight"])


def test_k_larger_than_the_model_is_refused_before_any_compute(make_cfg):
    for method in ("cf_k", "eu_k"):
        with pytest.raises(ConfigError, match="method.k = 50"):
            validate(make_cfg(f"method={method}", "method.k=50"))


def test_eu_k_trains_for_the_originals_epochs(make_cfg):
    cfg = make_cfg("method=eu_k", "train.epochs=7")
    assert cfg.method.epochs == 7
