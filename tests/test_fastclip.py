"""FastClip (models/fastclip.py): PowerQR against the singular values of the layer's explicit
matrix, built column by column on a small input; clipping to a target."""

import pytest
import torch
from torch import nn

from models.fastclip import PowerQR, clip_layer, linear_part, spectral_norms


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
