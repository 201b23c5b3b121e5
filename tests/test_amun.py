"""AMUN on tiny data, and its adversarial set built once through the cache."""

import copy

import pytest
import torch

from methods import amun
from runner.__main__ import execute

from conftest import FAST
from tiny import HP, linear_model, tiny_data

def _data(use_retain=True, adversarial=True):
    g = torch.Generator().manual_seed(1)
    labels = (tiny_data().forget_y + 1) % 3
    adv = (torch.rand(24, 1, 6, 6, generator=g), labels) if adversarial else None
    return tiny_data(use_retain, adversarial=adv)


_model = linear_model


@pytest.mark.parametrize("use_retain", [True, False])
@pytest.mark.parametrize("adv_only", [True, False])
@pytest.mark.parametrize("salun_ratio", [None, 0.5])
def test_amun_variants_train_on_the_adversarial_set(use_retain, adv_only, salun_ratio):
    data, original = _data(use_retain), _model()
    hp = {**HP, "epochs": 10, "lr": 0.5, "decay_every": 10}
    out = amun.unlearn(copy.deepcopy(original), data, adv_only=adv_only, salun_ratio=salun_ratio,
                       salun_accumulation="batch_mean", **hp)
    assert any(not torch.equal(p, q) for p, q in zip(out.parameters(), original.parameters()))
    if not use_retain:  # D_A is a third or half of what it trains on: its labels must be fit
        adv_x, adv_y = data.adversarial
        with torch.no_grad():
            before = torch.softmax(original(adv_x), 1)[torch.arange(24), adv_y].mean()
            after = torch.softmax(out(adv_x), 1)[torch.arange(24), adv_y].mean()
        assert after > before + 0.05


def test_amun_without_an_adversarial_set_says_so():
    with pytest.raises(ValueError, match="needs the adversarial set"):
        amun.unlearn(_model(), _data(adversarial=False), adv_only=False, salun_ratio=None,
                    salun_accumulation="batch_mean", **HP)


def test_adversarial_set_is_built_once_and_reported(make_cfg, tmp_path):
    overrides = (*FAST, "method=amun", "method.epochs=1", "method.attack.eps_init=auto",
                 "method.attack.auto_base=0.25")
    first = execute(make_cfg(*overrides, "logger=wandb"), tmp_path / "a")  # the W&B charts too
    second = execute(make_cfg(*overrides, "method.lr=0.001"), tmp_path / "b")
    assert first["cache_hits"]["adversarial"] is False and second["cache_hits"]["adversarial"]
    adv = first["adversarial"]
    assert adv["success_rate"] > 90.0 and 0 < adv["model_calls_per_sample"] < 150
    # One epoch on D_R + D_F + D_A: the unlearned model has taken on most of D_A's wrong labels.
    assert 50.0 < adv["unlearned_adv_label_pct"] <= 100.0
    m = first["metrics"]
    assert m["unlearned"]["forget_confidence"] < m["original"]["forget_confidence"]
    eps_init = adv["eps_init"]
    assert eps_init in [0.25 * 2 ** k for k in range(8)]
    assert sum(adv["eps_histogram"].values()) == round(144 * adv["success_rate"] / 100)
    # 0 for samples the original already misclassified, else a doubling of eps_init
    assert all(float(e) == 0 or float(e) >= eps_init * 0.999 for e in adv["eps_histogram"])
    assert (tmp_path / "a" / "adversarial_eps.png").stat().st_size > 1000
    # A different attack is a different artifact.
    third = execute(make_cfg(*overrides, "method.attack.norm=linf",
                             "method.attack.auto_base=0.02"), tmp_path / "c")
    assert third["cache_hits"]["adversarial"] is False


def test_an_empty_adversarial_set_says_so():
    data = _data()
    data.adversarial = (data.adversarial[0][:0], data.adversarial[1][:0])
    with pytest.raises(ValueError, match="D_A is empty"):
        amun.unlearn(_model(), data, adv_only=False, salun_ratio=None,
                    salun_accumulation="batch_mean", **HP)


@pytest.mark.parametrize("override,message", [
    ("method.attack.eps_init=big", "eps_init must be a positive number or auto"),
    ("method.attack.norm=l3", "norm l2 or linf"),
    ("method.attack.steps=0", "steps must be >= 1"),
    ("method.salun_ratio=1.5", "salun_ratio must be > 0.0 and <= 1.0"),
    ("method.attack.kind=fgsm method.attack.eps_init=auto", "eps_init=auto searches with PGD"),
])
def test_bad_attack_configs_fail_before_training(make_cfg, tmp_path, override, message):
    from runner.config import ConfigError
    with pytest.raises(ConfigError, match=message):
        execute(make_cfg(*FAST, "method=amun", *override.split()), tmp_path / "run")
