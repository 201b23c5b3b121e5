"""FastClip (models/fastclip.py): PowerQR against the singular values of the layer's explicit
matrix, built column by column on a small input; clipping to a target."""

import copy

import pytest
import torch
from torch import nn

from models.fastclip import clippers_of
from models.spectral import PowerQR, clip_layer, linear_part, spectral_norms
from models.build import build_model
from runner.config import ConfigError, validate
from runner.train import finetune
from runner.trained import load_dataset, fit_new_model, new_model


def explicit_singular_values(layer: nn.Module, input_shape) -> torch.Tensor:
    """Singular values of A, the layer's linear part, from its matrix: column j is A(e_j)."""
    n = int(torch.tensor(input_shape).prod())
    basis = torch.eye(n).reshape(n, *input_shape)
    with torch.no_grad():
        columns = linear_part(layer, basis).reshape(n, -1)
    return torch.linalg.svdvals(columns.T.double())


def _conv(padding_mode, stride, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode=padding_mode, bias=True)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("stride", [1, 2])
def test_power_qr_matches_the_explicit_matrix_on_conv_layers(padding_mode, stride):
    layer, shape = _conv(padding_mode, stride), (3, 6, 6)
    truth = explicit_singular_values(layer, shape)
    estimate = PowerQR(layer, shape, k=3).run(300, torch.Generator().manual_seed(0))
    assert float(estimate[0]) == pytest.approx(float(truth[0]), abs=1e-3)
    assert estimate.tolist() == pytest.approx(truth[:3].tolist(), abs=1e-2)  # the next ones too


def test_power_qr_matches_on_linear_layers_and_ignores_the_bias():
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    truth = torch.linalg.svdvals(layer.weight.detach().double())
    with torch.no_grad():
        layer.bias.fill_(100.0)  # M(0) is removed: the bias cannot change A
    estimate = PowerQR(layer, (20,)).run(200, torch.Generator().manual_seed(0))
    assert float(estimate[0]) == pytest.approx(float(truth[0]), abs=1e-3)


def test_warm_start_needs_one_step_per_small_change():
    layer, shape = _conv("zeros", 1), (3, 6, 6)
    state = PowerQR(layer, shape)
    state.run(100, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight.mul_(1.01)  # a training step's worth of change
    one = float(state.run(1)[0])
    assert one == pytest.approx(float(explicit_singular_values(layer, shape)[0]), rel=2e-3)


@pytest.mark.parametrize("padding_mode, stride", [("zeros", 1), ("reflect", 2), ("replicate", 1)])
@pytest.mark.parametrize("target", [0.5, 2.0])  # down, and up (conv layers are pushed up)
def test_clipping_brings_a_conv_layer_to_the_target(padding_mode, stride, target):
    layer, shape = _conv(padding_mode, stride), (3, 6, 6)
    state = PowerQR(layer, shape)
    state.run(100, torch.Generator().manual_seed(0))
    before = float(explicit_singular_values(layer, shape)[0])
    # As in training: every 50 steps (one warm-started PowerQR iteration each) a clip. One clip
    # brings the top direction to the target; the next ones come down at the following clips.
    for _ in range(10):
        clip_layer(state, target, iterations=50)
    after = float(explicit_singular_values(layer, shape)[0])
    assert abs(before - target) > 0.05  # there was something to do, up or down
    assert after == pytest.approx(target, abs=0.05)


def test_clipping_leaves_a_linear_layer_below_the_target_alone():
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    state = PowerQR(layer, (20,))
    state.run(100, torch.Generator().manual_seed(0))
    weights = layer.weight.detach().clone()
    before, after = clip_layer(state, 10.0)
    assert before == after and torch.equal(layer.weight, weights)
    for _ in range(10):
        clip_layer(state, 0.3, iterations=50)
    assert float(torch.linalg.svdvals(layer.weight.detach())[0]) == pytest.approx(0.3, abs=0.05)


def test_spectral_norms_reports_every_layer_on_its_input_shape():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2),
                          nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    norms = spectral_norms(model, torch.zeros(5, 1, 8, 8))
    assert set(norms) == {"0", "2", "4"}
    assert norms["0"] == pytest.approx(float(explicit_singular_values(model[0], (1, 8, 8))[0]),
                                       abs=1e-3)
    assert norms["2"] == pytest.approx(float(explicit_singular_values(model[2], (2, 8, 8))[0]),
                                       abs=1e-3)
    assert norms["4"] == pytest.approx(float(torch.linalg.svdvals(model[4].weight.detach())[0]),
                                       abs=1e-3)


# A ResNet-18 at width 4 on the digits: every conv and linear layer clipped to 1 during training.
CLIPPED = ["model=resnet18", "model.clip=1.0", "logger=none", "train=tiny",
           "device=cpu"]


def _within_target(model, example, target=1.0, tol=0.02):
    """Every layer's fresh PowerQR estimate: conv layers at the target (they are pushed up),
    linear layers at or below it; both to `tol` (the final clip aims at 0.01)."""
    norms = spectral_norms(model, example)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bad = {n: s for n, s in norms.items()
           if s > target + tol or (n in convs and s < target - tol)}
    return norms, bad


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x.float() / 255).argmax(1) == y).float().mean())


@pytest.mark.parametrize("batch_norm, width, epochs, lr, clip_every, least_acc", [
    (False, 8, 10, 0.2, 1, 0.5),   # without BN a layer drifts far in 100 steps: clip every step
    (True, 4, 6, 0.1, None, 0.4),  # the BN statistics are re-estimated after the final clip
])
def test_a_clipped_model_trains_with_every_layer_at_its_target(make_cfg, batch_norm, width, epochs,
                                                               lr, clip_every, least_acc):
    cfg = make_cfg(*CLIPPED, f"model.batch_norm={batch_norm}", f"model.width={width}",
                   f"model.clip_every={clip_every or 'null'}", f"train.epochs={epochs}", f"train.lr={lr}")
    validate(cfg)
    ds = load_dataset(cfg)
    model = new_model(cfg, torch.device("cpu"), 1)
    assert model.fastclip.every == (clip_every or 50)  # the paper's 50 steps with batch norm
    fit_new_model(cfg, model, ds.train_x, ds.train_y, seed=1, desc="clipped")
    norms, bad = _within_target(model, ds.test_x[:1].float() / 255)
    assert len(norms) == 21 and not bad, bad  # 20 convs (3 projections) and the fc layer
    assert _accuracy(model, ds.test_x, ds.test_y) > least_acc  # chance: 0.1


def _digits_stream(ds, seed=0):
    from data.loader import Augment, Batches
    return Batches(ds.train_x, ds.train_y, batch_size=128, shuffle=True, seed=seed,
                   augment=Augment(crop_pad=0, flip=False))


def test_fine_tuning_a_clipped_model_is_the_same_from_the_cache_and_keeps_it_clipped(make_cfg):
    """An unlearning method fine-tunes a deepcopy of the clipped original: it stays clipped, and
    it does the same whether the original was trained in this process (deepcopy of the trained
    model) or loaded from the cache (a fresh model with the saved weights). A frozen copy
    (SCRUB's teacher) is never clipped by an optimizer."""
    cfg = make_cfg(*CLIPPED, "model.batch_norm=false", "model.width=4", "train.epochs=1")
    ds = load_dataset(cfg)
    trained = new_model(cfg, torch.device("cpu"), 1)
    fit_new_model(cfg, trained, ds.train_x, ds.train_y, seed=1, desc="original")
    assert all(state.x is None for state in trained.fastclip.states.values())
    in_process = copy.deepcopy(trained)
    layers = dict(in_process.named_modules())
    assert all(state.layer is layers[name] for name, state in in_process.fastclip.states.items())
    from_cache = new_model(cfg, torch.device("cpu"), 2)
    from_cache.load_state_dict(trained.state_dict())
    for model in (in_process, from_cache):
        finetune(model, _digits_stream(ds), epochs=1, lr=0.5, momentum=0.9, weight_decay=0.0,
                 decay_every=1, decay_gamma=0.1)
    a, b = in_process.state_dict(), from_cache.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], trained.state_dict()["fc.weight"])  # it did train
    assert not _within_target(in_process, ds.test_x[:1].float() / 255)[1]
    teacher = copy.deepcopy(in_process).requires_grad_(False)
    assert clippers_of(nn.ModuleList([in_process, teacher])) == [in_process.fastclip]
    unclipped = new_model(make_cfg("model=resnet18", "model.width=4"), torch.device("cpu"), 1)
    assert not hasattr(unclipped, "fastclip")


def test_the_final_clip_sees_a_singular_value_just_above_a_crowd_at_the_target():
    """After training, many singular values sit at the target and one a little above it. The
    final check must find that one: a power iteration on I + A^T A gains only (1 + 1.03^2) / 2 per
    step on it, so after 100 steps from a random start it is still buried in the crowd and reads
    about 1.008 (under the 1.01 tolerance); on A^T A it gains 1.03^2 per step and reads 1.03."""
    from models.fastclip import ClipSpec, attach

    torch.manual_seed(0)
    n = 1024
    model = nn.Sequential(nn.Linear(n, n, bias=False))
    u, v = torch.linalg.qr(torch.randn(n, n))[0], torch.linalg.qr(torch.randn(n, n))[0]
    sigma = torch.cat([torch.tensor([1.03]), torch.ones(n - 1)])
    with torch.no_grad():
        model[0].weight.copy_(u @ torch.diag(sigma) @ v.T)
    attach(model, ClipSpec(target=1.0), torch.zeros(1, n))
    model.fastclip.finish()
    assert float(torch.linalg.svdvals(model[0].weight.detach())[0]) <= 1.01


def test_the_final_clip_rescales_a_layer_that_many_clips_cannot_fix(caplog):
    """64 singular values of 3: each clip lowers one, 20 rounds cannot do all; the layer is then
    rescaled, and the log says so."""
    from models.fastclip import ClipSpec, attach

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(3 * torch.linalg.qr(torch.randn(64, 64))[0])
    attach(model, ClipSpec(target=1.0), torch.zeros(1, 64))
    with caplog.at_level("WARNING", logger="models.fastclip"):
        model.fastclip.finish()
    assert float(torch.linalg.svdvals(model[0].weight.detach())[0]) <= 1.01
    assert "1 layers (0) still missed the target after 20 final clips" in caplog.text
    assert "at the end of training 0 had spectral norm 3" in caplog.text


def test_frozen_layers_are_not_clipped_and_a_frozen_teachers_batch_norm_is_kept():
    from models.fastclip import ClipSpec, attach
    from runner.train import recompute_batch_norm

    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    teacher = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    student[0].weight.requires_grad_(False)
    attach(student, ClipSpec(target=1.0), torch.zeros(1, 1, 6, 6))
    assert student.fastclip.states == {}
    teacher[1].running_mean.fill_(5.0)

    class Pair(nn.Module):  # SCRUB's StudentTeacher: train() leaves the teacher in eval mode
        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher

        def train(self, mode=True):
            self.student.train(mode)
            return self

        def forward(self, x):
            return self.student(x) + self.teacher(x)

    teacher.eval()
    recompute_batch_norm(Pair(), [(torch.rand(4, 1, 6, 6), None, 1.0)] * 2)
    assert torch.all(teacher[1].running_mean == 5.0)
    assert not torch.all(student[1].running_mean == 0.0)  # re-estimated from the data


@pytest.mark.parametrize("override, message", [
    ("model.clip=-1", "target spectral norm must be > 0"),
    ("model.clip_every=0", "clip_every must be null or >= 1"),
    ("model.clip_steps=0", "clip_steps and init_iterations must be >= 1"),
    ("model.clip=true", "clip must be a number"),
    ("model.clip_steps=2.5", "clip_steps must be an integer"),
    ("train=fast", "would undo the clipping"),
])
def test_bad_clipping_options_fail_validation(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg("model=resnet18", "model.clip=1.0", override))


def test_clipping_options_enter_the_cache_key_only_when_clipping(make_cfg):
    from runner.trained import model_spec

    cfg = make_cfg("model=resnet18")
    ds = load_dataset(cfg)
    idx = torch.arange(10).numpy()
    plain = model_spec(cfg, ds, idx)
    assert model_spec(make_cfg("model=resnet18", "model.clip_every=7"), ds, idx) == plain
    assert model_spec(make_cfg("model=resnet18", "model.clip=1.0"), ds, idx) != plain
    assert build_model(cfg.model, cfg.dataset).state_dict().keys() == build_model(
        make_cfg("model=resnet18", "model.clip=1.0").model, cfg.dataset).state_dict().keys()


def test_the_amun_lipschitz_experiment_runs_end_to_end(make_cfg, tmp_path):
    """experiment=amun_lipschitz at toy size on the digits: clipped ResNets without BN for the
    original, the oracle and RMIA's reference models, AMUN's attack and fine-tuning, RMIA's AUCs."""
    from runner.__main__ import execute

    cfg = make_cfg("experiment=amun_lipschitz", "dataset=digits", "method=amun", "model.width=4",
                   "train=tiny", "train.epochs=2", "reference.num_models=2", "method.epochs=1",
                   "logger=none", "device=cpu")
    assert cfg.model.clip == 1.0 and not cfg.model.batch_norm and not cfg.model.normalize
    result = execute(cfg, tmp_path / "run")
    assert result["status"] == "ok" and result["method"] == "amun"
    for role in ("unlearned", "retrain", "original"):
        assert {"test_acc", "rmia_ft_auc", "rmia_fr_auc"} <= set(result["metrics"][role])
        norms = result["spectral_norms"][role]  # AMUN's fine-tuning kept the model clipped
        assert len(norms) == 21 and max(norms.values()) <= 1.02
        assert min(v for k, v in norms.items() if k != "fc") >= 0.98


def test_a_compiled_clipped_model_is_clipped_once_per_step():
    """torch.compile's wrapper answers for the module it wraps: its Clipper is still one."""
    from models.fastclip import ClipSpec, attach
    from runner.hooks import Clip
    model = attach(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2)),
                   ClipSpec(target=1.0), torch.zeros(1, 1, 8, 8))
    compiled = torch.compile(model)  # nothing compiles until it is called
    assert clippers_of(compiled) == [model.fastclip]
    (hook,) = Clip.of(compiled, recompute=lambda m, b: None)
    assert hook.clippers == [model.fastclip]
