"""LOTOS (models/ensemble.py), plain PGD (attacks.pgd.pgd), transferability and stage=ensemble."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import pgd
from models.ensemble import Ensemble, Mean, ensemble_loss, lotos_penalty, lotos_term
from models.fastclip import ClipSpec, attach
from runner.__main__ import execute
from runner.config import ConfigError, validate
from runner.ensemble import alignment, transfer_rate


def _linear(weight):
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
    return layer


def test_lotos_term_is_zero_for_orthogonal_directions_and_positive_otherwise():
    """A = diag(1, 0) stretches e1 by 1 and e2 by 0. The other model's top direction e2 is
    orthogonal to what A stretches: no penalty. e1 gives ReLU(1 - 0.8) = 0.2; a direction at 45
    degrees ReLU(1/sqrt(2) - 0.8) = 0 (stretched less than mal); with mal 0.5, 1/sqrt(2) - 0.5."""
    a = _linear([[1.0, 0.0], [0.0, 0.0]])
    e1, e2, diag = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    with torch.no_grad():
        assert float(lotos_term(a, e2, mal=0.8)) == 0.0
        assert float(lotos_term(a, e1, mal=0.8)) == pytest.approx(0.2)
        assert float(lotos_term(a, diag, mal=0.8)) == 0.0
        assert float(lotos_term(a, diag, mal=0.5)) == pytest.approx(1 / math.sqrt(2) - 0.5)
    # Differentiable in the layer, not in v: the gradient shrinks A along e1 only.
    lotos_term(a, e1.requires_grad_(True), mal=0.8).backward()
    assert a.weight.grad.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def _clipped_pair(w1, w2):
    members = []
    for w in (w1, w2):
        model = nn.Sequential(_linear(w))
        attach(model, ClipSpec(target=10.0), torch.zeros(1, 2))
        model.fastclip.after_step(1)  # PowerQR from its random start: the top direction
        members.append(model)
    return members


def test_lotos_penalty_over_a_hand_made_pair_of_models():
    """Model 1 stretches e1 (sigma 2), model 2 stretches e2 (sigma 3): orthogonal, no penalty.
    Two models stretching e1: each sees the other's top direction e1 stretched by 2, twice
    (both ordered pairs): 2 x (2 - 0.8)."""
    orthogonal = _clipped_pair([[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]])
    aligned = _clipped_pair([[2.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]])
    with torch.no_grad():
        assert float(lotos_penalty(orthogonal, mal=0.8)) == pytest.approx(0.0, abs=1e-6)
        assert float(lotos_penalty(aligned, mal=0.8)) == pytest.approx(2 * 1.2, abs=1e-4)
    with pytest.raises(ValueError, match="needs clipped members"):
        lotos_penalty([nn.Sequential(_linear([[1.0]])), nn.Sequential(_linear([[1.0]]))], 0.8)


def test_alignment_measures_how_much_members_stretch_each_others_top_directions():
    """Model 1 stretches e1 by 2, model 2 stretches e2 by 3: each maps the other's top direction
    to 0. Two copies of one model: each stretches the other's top direction by its sigma, 2."""
    orthogonal = alignment(Ensemble(_clipped_pair([[2.0, 0.0], [0.0, 0.0]],
                                                  [[0.0, 0.0], [0.0, 3.0]])), mal=0.8)
    assert orthogonal == pytest.approx({"cross_stretch_mean": 0.0, "lotos_penalty": 0.0}, abs=1e-5)
    same = alignment(Ensemble(_clipped_pair([[2.0, 0.0], [0.0, 0.0]],
                                            [[2.0, 0.0], [0.0, 0.0]])), mal=0.8)
    assert same == pytest.approx({"cross_stretch_mean": 2.0, "lotos_penalty": 2.4}, abs=1e-4)


def test_the_joint_loss_is_the_sum_of_the_members_losses_plus_the_weighted_penalty():
    members = _clipped_pair([[2.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]])
    ensemble = Ensemble(members)
    x, y = torch.tensor([[0.3, 0.7], [0.9, 0.1]]), torch.tensor([0, 1])
    plain = ensemble_loss(ensemble, label_smoothing=0.1, lotos_weight=0.0, mal=0.8)
    lotos = ensemble_loss(ensemble, label_smoothing=0.1, lotos_weight=0.05, mal=0.8)
    with torch.no_grad():  # values only
        logits = ensemble(x)
        assert logits.shape == (2, 2, 2)
        ce = sum(F.cross_entropy(m(x), y, label_smoothing=0.1) for m in members)
        assert float(plain(logits, y)) == pytest.approx(float(ce))
        assert float(lotos(logits, y)) == pytest.approx(float(ce) + 0.05 * 2.4, abs=1e-5)
        assert torch.allclose(Mean(ensemble)(x), (members[0](x) + members[1](x)) / 2)


def test_pgd_on_a_linear_model_moves_each_pixel_by_eps_along_the_sign_of_the_weights():
    """logits = (0, w.x): for label 0 the loss grows along w, so L_inf PGD ends at
    x + eps * sign(w) (ten steps of eps / 10 reach the corner, projection keeps it there)."""
    w = torch.tensor([0.5, -2.0, 1.0, -0.1])
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(4), w]))
    x = torch.tensor([[0.5, 0.5, 0.98, 0.3]] * 3)
    adv = pgd(model, x, torch.zeros(3, dtype=torch.long), norm="linf", eps=0.04, steps=50,
              step_ratio=0.1, batch_size=2)
    expected = torch.tensor([[0.54, 0.46, 1.0, 0.26]] * 3)  # the third pixel stops at 1
    assert torch.allclose(adv, expected, atol=1e-6)
    assert float((adv - x).abs().max()) <= 0.04 + 1e-6


def test_transfer_rate_counts_only_pairs_correct_on_clean_images_and_fooling_the_source():
    t, f = True, False
    correct_s = torch.tensor([t, t, t, t, f, t])
    correct_t = torch.tensor([t, t, t, f, t, t])
    fooled_s = torch.tensor([t, t, t, t, t, f])
    fooled_t = torch.tensor([t, f, f, t, t, t])
    # eligible: the first three; the target is fooled on one of them
    assert transfer_rate(correct_s, correct_t, fooled_s, fooled_t) == pytest.approx(1 / 3)
    assert math.isnan(transfer_rate(correct_s & False, correct_t, fooled_s, fooled_t))


ENSEMBLE = ["stage=ensemble", "model=resnet18", "model.width=4", "model.clip=1.0", "train=tiny",
            "train.epochs=2", "ensemble.attack.n=40", "ensemble.attack.steps=5", "logger=none",
            "device=cpu"]


def test_stage_ensemble_trains_caches_and_reports_a_lotos_ensemble(make_cfg, tmp_path):
    cfg = make_cfg(*ENSEMBLE, "ensemble.lotos_weight=0.05")
    result = execute(cfg, tmp_path / "run")
    e = result["ensemble"]
    assert result["status"] == "ok" and result["cache_hits"] == {"ensemble": False}
    assert len(e["member_acc"]) == 3 and len(e["member_robust_acc"]) == 3
    assert sorted(e["transfer_rate"]) == ["0->1", "0->2", "1->0", "1->2", "2->0", "2->1"]
    assert e["n_attacked"] == 40 and all(0 <= a <= 100 for a in e["member_acc"])
    # every member's every layer at its target after training (conv at 1, fc at most 1)
    for norms in e["spectral_norms"]:
        assert len(norms) == 21 and max(norms.values()) <= 1.02
        assert min(v for k, v in norms.items() if k != "fc") >= 0.98
    assert 0 < e["cross_stretch_mean"] <= 1.02 and e["lotos_penalty"] >= 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["ensemble"]["ensemble_acc"] == e["ensemble_acc"]
    again = execute(cfg, tmp_path / "again")
    assert again["cache_hits"] == {"ensemble": True}
    assert again["ensemble"]["member_acc"] == e["member_acc"]
    # LOTOS changes the training, hence the cache key
    plain = execute(make_cfg(*ENSEMBLE, "ensemble.lotos_weight=0"), tmp_path / "plain")
    assert plain["cache_keys"]["ensemble"] != result["cache_keys"]["ensemble"]


@pytest.mark.parametrize("overrides, message", [
    (["ensemble.members=1"], "ensemble.members must be an integer >= 2"),
    (["ensemble.lotos_weight=0.05", "model.clip=null"], "needs clipped members"),
    (["ensemble.attack.norm=l1"], "ensemble.attack needs norm l2 or linf"),
    (["ensemble.attack.eps=0"], "ensemble.attack needs"),
    (["ensemble.lotos_weight=abc"], "ensemble.lotos_weight must be a number"),
    (["ensemble.attack.steps=2.5"], "ensemble.attack.steps must be an integer"),
    (["stage=ensembles"], "stage must be unlearn, reference or ensemble"),
])
def test_bad_ensemble_settings_fail_validation(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*ENSEMBLE, *overrides))
