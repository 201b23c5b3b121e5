"""Every method runs on a tiny dataset, with and without the retain set where it has both."""

import copy

import pytest
import torch

from methods import ft, ga, retrain, rl
from runner.evaluate import predict

from tiny import HP, linear_model, tiny_data

EXTRA = {ga: dict(retain_pass="before")}


def _data(use_retain=True, oracle=None):
    return tiny_data(use_retain, train_from_scratch=lambda: copy.deepcopy(oracle))


_model = linear_model


def _changed(a, b):
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("method,use_retain", [(ft, True), (rl, True), (rl, False), (ga, True),
                                               (ga, False)])
def test_method_changes_the_model_and_keeps_its_shape(method, use_retain):
    data = _data(use_retain=use_retain)
    original = _model()
    out = method.unlearn(copy.deepcopy(original), data, **HP, **EXTRA.get(method, {}))
    assert _changed(out, original)
    assert predict(out, data.forget_x, 32).shape == (24, 3)
    assert not out.training


def test_ga_raises_forget_loss():
    data = _data(use_retain=False)
    model = _model()
    loss = lambda m: torch.nn.functional.cross_entropy(predict(m, data.forget_x, 64), data.forget_y)
    before = loss(model)
    after = loss(ga.unlearn(copy.deepcopy(model), data, **HP, **EXTRA[ga]))
    assert after > before


def test_methods_that_need_the_retain_set_say_so():
    data = _data(use_retain=False)
    with pytest.raises(ValueError, match="ft needs the retain set"):
        ft.unlearn(_model(), data, **HP)
    with pytest.raises(ValueError, match="retrain needs the retain set"):
        retrain.unlearn(_model(), data)
    assert ft.unlearn.needs_retain and retrain.unlearn.needs_retain
    assert not hasattr(rl.unlearn, "needs_retain") and not hasattr(ga.unlearn, "needs_retain")


def test_ga_with_retain_descends_on_it():
    # Same forget set and seed; the retain pass must change the outcome.
    with_r = ga.unlearn(_model(), _data(use_retain=True), **HP, **EXTRA[ga])
    without = ga.unlearn(_model(), _data(use_retain=False), **HP, **EXTRA[ga])
    assert _changed(with_r, without)


def test_retrain_returns_the_oracle():
    oracle = _model()
    torch.nn.init.zeros_(oracle[1].weight)
    out = retrain.unlearn(_model(), _data(oracle=oracle))
    assert torch.equal(out[1].weight, oracle[1].weight) and out is not oracle
