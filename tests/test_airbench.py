"""The train=fast path: the airbench network (whitening, identity init, TTA), the recipe's optimizer
and schedule, and a whole run on CPU with the same code the GPU runs."""

from __future__ import annotations

import copy
import json
import pytest
import torch
import torch.nn.functional as F

from data.loader import Batches
from models.airbench import AirbenchNet
from runner.__main__ import execute
from runner.optim import sgd
from runner.recipe import make_scheduler, triangle
from runner.train import fit
from tests.conftest import FAST


def _net(size: int = 32, channels: int = 3, tta: int = 0, widths=(8, 16, 16)) -> AirbenchNet:
    torch.manual_seed(0)
    return AirbenchNet(num_classes=10, in_channels=channels, image_size=size, mean=[0.5] * channels,
                       std=[0.25] * channels, widths=widths, tta=tta)


def _smooth_images(n: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images with strongly correlated neighbouring pixels (like natural ones), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_features_channels_last_and_bf16(size):
    model = _net(size).eval()
    x = _smooth_images(4, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, 10)
        torch.testing.assert_close(model.fc(model.features(x)) * model.scale, out)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), out,
                                   rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16


def test_rejects_images_below_16_pixels_and_bad_options():
    with pytest.raises(ValueError, match="16x16"):
        _net(size=8)
    with pytest.raises(ValueError, match="tta"):
        _net(tta=3)


def test_whitening_layer_whitens_the_patches():
    """With eps = 0 the first half of the whitening filters map the 2x2 patches of the images
    they were fitted on to unit covariance; the second half are their negatives."""
    model, x = _net(), _smooth_images()
    model.init_from_data(x, eps=0.0)
    z = F.conv2d(model.normalize(x).double(), model.whiten.weight.double())  # no bias
    half = z.shape[1] // 2
    flat = z[:, :half].permute(0, 2, 3, 1).reshape(-1, half)
    cov = flat.T @ flat / len(flat)
    torch.testing.assert_close(cov, torch.eye(half, dtype=torch.float64), atol=1e-4, rtol=0)  # fp32 filters
    torch.testing.assert_close(z[:, half:], -z[:, :half])
    assert not model.whiten.weight.requires_grad


def test_convs_start_as_the_identity_on_their_first_channels():
    """Dirac init: conv2 of each group maps its input to itself; conv1 copies its first
    min(in, out) input channels to its first outputs."""
    model = _net()
    for group in model.groups:
        with torch.no_grad():
            x = torch.randn(2, group.conv2.in_channels, 8, 8)
            torch.testing.assert_close(group.conv2(x), x)
            x = torch.randn(2, group.conv1.in_channels, 8, 8)
            n = min(group.conv1.in_channels, group.conv1.out_channels)
            torch.testing.assert_close(group.conv1(x)[:, :n], x[:, :n])


def _shift(x: torch.Tensor, d: int) -> torch.Tensor:
    """view[i, j] = x[i - d, j - d], with the missing row/column reflected (d = +-1)."""
    if d == 1:
        x = torch.cat([x[:, :, 1:2], x[:, :, :-1]], 2)
        return torch.cat([x[:, :, :, 1:2], x[:, :, :, :-1]], 3)
    x = torch.cat([x[:, :, 1:], x[:, :, -2:-1]], 2)
    return torch.cat([x[:, :, :, 1:], x[:, :, :, -2:-1]], 3)


def test_test_time_augmentation_averages_the_views_in_eval_mode_only():
    plain = _net(tta=0).eval()
    x = _smooth_images(3)
    with torch.no_grad():
        def mirror(v):
            return (plain(v) + plain(v.flip(3))) / 2

        for level, expected in ((1, mirror(x)),
                                (2, 0.5 * mirror(x) + 0.25 * (mirror(_shift(x, 1))
                                                              + mirror(_shift(x, -1))))):
            model = copy.deepcopy(plain)
            model.tta = level
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        train_a, train_b = copy.deepcopy(plain).train(), copy.deepcopy(plain).train()
        train_b.tta = 2
        torch.testing.assert_close(train_a(x), train_b(x))


def test_bias_lr_scale_puts_batchnorm_shifts_in_their_own_group():
    model = _net()
    opt = sgd(model, lr=1.5, momentum=0.85, weight_decay=1e-3, nesterov=True, bias_lr_scale=64.0)
    others, biases = opt.param_groups
    bn_biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(p) for p in bn_biases}
    assert (biases["lr"], biases["weight_decay"]) == (96.0, 1e-3 / 64)
    assert (others["lr"], others["weight_decay"], others["nesterov"]) == (1.5, 1e-3, True)
    frozen = {id(model.whiten.weight)} | {id(m.weight) for m in model.modules()
                                          if isinstance(m, torch.nn.BatchNorm2d)}
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not frozen & in_groups
    assert in_groups | frozen == {id(p) for p in model.parameters()}


def test_triangle_schedule_steps_per_batch():
    assert triangle(0, 100, 0.25, 0.2, 0.1) == pytest.approx(0.2)
    assert triangle(25, 100, 0.25, 0.2, 0.1) == pytest.approx(1.0)
    assert triangle(10, 100, 0.25, 0.2, 0.1) == pytest.approx(0.2 + 0.8 * 10 / 25)
    assert triangle(100, 100, 0.25, 0.2, 0.1) == pytest.approx(0.1)
    assert triangle(50, 100, 0.25, 0.2, 0.1) == pytest.approx(1.0 - 0.9 * 25 / 75)
    model = torch.nn.Linear(4, 2)
    opt = sgd(model, lr=2.0, momentum=0.0, weight_decay=0.0)
    x, y = torch.randint(0, 256, (40, 1, 2, 2), dtype=torch.uint8), torch.randint(0, 2, (40,))
    batches = Batches(x, y, batch_size=10, shuffle=True, seed=0)
    sched = make_scheduler(opt, name="triangle", epochs=2, steps_per_epoch=len(batches),
                           warmup=0.25, start=0.2, end=0.1)
    seen = []
    fit(torch.nn.Sequential(torch.nn.Flatten(), model), batches, epochs=2, optimizer=opt,
        scheduler=sched, grad_hook=lambda m: seen.append(opt.param_groups[0]["lr"]))
    assert seen == pytest.approx([2.0 * triangle(i, 8, 0.25, 0.2, 0.1) for i in range(8)])


@pytest.mark.parametrize("compile_", [False, True])
def test_train_fast_runs_end_to_end_and_learns(make_cfg, tmp_path, compile_):
    """train=fast + model=airbench through the runner (original, oracle, unlearning, evaluation) on
    generated 16x16 images: the original is far above chance. `compile=true` runs the same recipe
    through torch.compile (the code path GPU users take for speed)."""
    # 12 epochs of 8 steps: the lookahead EMA (from epoch 3) needs enough steps to average over.
    cfg = make_cfg(*FAST, "dataset=synthetic", "model=airbench", "model.widths=[16,32,32]",
                   "train=fast", "train.epochs=12", "train.batch_size=64", "train.lr=0.5",
                   f"train.compile={str(compile_).lower()}", "method=ft", "method.epochs=1")
    result = execute(cfg, tmp_path / "run")
    assert result["status"] == "ok"
    original = result["metrics"]["original"]
    assert original["test_acc"] > 60.0, original  # 4 classes: chance is 25 %
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["retrain"]["forget_acc"] < original["forget_acc"]


def _reference_lookahead_run(model, data, *, lr, steps_per_epoch, epochs, la, limit_epochs):
    """airbench94's loop, transcribed: plain SGD; the parameter `3.bias` (in the whitening bias's
    role) stops training after `limit_epochs` (requires_grad off); a LookaheadState-style EMA of
    the float state dict, started at the first update step of epoch `start_epochs`, updated every n steps
    with rho = base ** n * (step / total) ** pow, and copied back at every epoch's end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    total, step, ema = epochs * steps_per_epoch, 0, None
    for epoch in range(epochs):
        model[3].bias.requires_grad = epoch < limit_epochs
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
            if epoch >= la["start_epochs"] and step % la["every_n_steps"] == 0:
                if ema is None:
                    ema = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    rho = (la["decay_base"] ** la["every_n_steps"]
                           * (step / total) ** la["decay_pow"])
                    for k, v in model.state_dict().items():
                        if v.is_floating_point():
                            ema[k].lerp_(v, 1 - rho)
                            v.copy_(ema[k])
        if ema is not None:
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    v.copy_(ema[k])
    return model


def test_the_hooks_are_airbenchs_lookahead_and_bias_freeze():
    from runner.hooks import FreezeAfter, Hook, Lookahead
    torch.manual_seed(0)
    data = [(torch.randn(16, 3), torch.randint(0, 2, (16,))) for _ in range(4)]  # 4 steps/epoch
    la = dict(start_epochs=1, decay_base=0.9, decay_pow=2.0, every_n_steps=3)

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                   torch.nn.ReLU(), torch.nn.Linear(4, 2))

    reference = _reference_lookahead_run(net(), data, lr=0.1, steps_per_epoch=4, epochs=5, la=la,
                                         limit_epochs=2)
    ours = net()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    lookahead = Lookahead(ours, la, steps_per_epoch=4, total_steps=20)
    bias_after = []

    class BiasAfterEachEpoch(Hook):
        def after_epoch(self, model, epoch):
            bias_after.append(ours[3].bias.detach().clone())

    fit(ours, [(x, y, 1.0) for x, y in data], epochs=5, optimizer=opt,
        hooks=[FreezeAfter(ours, {"3.bias": 2}, steps_per_epoch=4), lookahead,
               BiasAfterEachEpoch()])
    # The BatchNorm statistics are averaged too: compare the whole state.
    for k, v in reference.state_dict().items():
        assert torch.allclose(ours.state_dict()[k], v.to(ours.state_dict()[k].dtype),
                              atol=1e-6), k
    assert (bias_after[1] - bias_after[0]).abs().max() > 1e-3  # it trains in epochs 1 and 2 ...
    assert all(torch.equal(bias_after[1], b) for b in bias_after[2:])  # ... then no more
    ema_in_state = lookahead.state_dict()
    assert ema_in_state["steps"] == 20 and set(ema_in_state["ema"]) == set(ours.state_dict()) - {
        "1.num_batches_tracked"}


def test_whitening_bias_starts_at_zero_and_trains_three_epochs():
    model = AirbenchNet(num_classes=10, in_channels=3, image_size=32, mean=[0.5] * 3,
                        std=[0.25] * 3)
    assert torch.equal(model.whiten.bias, torch.zeros_like(model.whiten.bias))
    assert model.epoch_limits() == {"whiten.bias": 3}
    assert AirbenchNet(num_classes=10, in_channels=3, image_size=32, mean=[0.5] * 3,
                       std=[0.25] * 3, whiten_bias_epochs=None).epoch_limits() == {}
