"""U-LiRA: Gaussian fits, the likelihood ratio in closed form, and shadow models end to end."""

import math

import numpy as np
import pytest

from attacks.lira import distinguish, fit_gaussians, likelihood_ratio
from runner.__main__ import execute

from conftest import FAST


def test_fit_gaussians_per_sample_and_pooled():
    phi = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 100.0]])
    mask = np.array([[True, True], [True, False], [False, True]])
    mean, std = fit_gaussians(phi, mask, fix_variance=False)
    # sample 0: {1, 3} -> mean 2, variance 2 (ddof 1); sample 1: {2, 100} -> mean 51, variance 4802
    np.testing.assert_allclose(mean, [2.0, 51.0])
    np.testing.assert_allclose(std, [math.sqrt(2), math.sqrt(4802)])
    # pooled: squared deviations 1 + 1 + 49^2 + 49^2 = 4804 over 4 values - 2 means = 2 dof
    _, pooled = fit_gaussians(phi, mask, fix_variance=True)
    np.testing.assert_allclose(pooled, [math.sqrt(2402)] * 2)


def test_likelihood_ratio_closed_form():
    # log N(0; 0, 1) - log N(0; 2, 1) = 0 - (-(2^2) / 2) = 2
    np.testing.assert_allclose(likelihood_ratio(np.array([0.0]), (0.0, 1.0), (2.0, 1.0)), [2.0])
    # equal means, std 1 vs 2: the ratio of normalizers, log 2; and symmetric in the hypotheses
    np.testing.assert_allclose(likelihood_ratio(np.array([0.0]), (0.0, 1.0), (0.0, 2.0)), [math.log(2)])
    x = np.array([-1.0, 0.3, 4.0])
    np.testing.assert_allclose(likelihood_ratio(x, (1.0, 1.5), (0.0, 0.5)),
                               -likelihood_ratio(x, (0.0, 0.5), (1.0, 1.5)))


def test_distinguish():
    m = distinguish(np.array([1.0, 2.0]), np.array([-1.0, 0.5]))
    assert m["ulira_auc"] == 100.0
    assert m["ulira_acc"] == 75.0  # 0.5 > 0 calls an oracle score "unlearned"
    same = distinguish(np.array([0.2, -0.1]), np.array([0.2, -0.1]))
    assert same == {"ulira_auc": 50.0, "ulira_acc": 50.0}


QUICK = (*FAST, "train.epochs=2", "reference.num_models=2", "eval=ulira")


def test_ulira_end_to_end_and_shadow_retrains_are_shared(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = execute(make_cfg(*QUICK, "method=retrain", cache_dir=cache), tmp_path / "a")
    # retrain's unlearned model is the oracle: indistinguishable by construction
    assert first["metrics"]["unlearned"]["ulira_auc"] == pytest.approx(50.0)
    assert first["metrics"]["retrain"]["ulira_acc"] == pytest.approx(50.0)
    assert first["shadows"]["retrains_trained"] == 2
    second = execute(make_cfg(*QUICK, "method=amun", "method.epochs=1",
                              "method.attack.eps_init=0.5", cache_dir=cache),
                     tmp_path / "b")
    assert second["shadows"]["retrains_trained"] == 0 and second["reference"]["trained"] == 0
    assert 0.0 <= second["metrics"]["unlearned"]["ulira_auc"] <= 100.0
    # D_A of every shadow and of the target: separate artifacts in the cache
    assert len(list((cache / "adversarial").glob("[!.]*"))) == 3


def test_ulira_refuses_sequential_requests_and_too_many_shadows(make_cfg, tmp_path):
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match="requests > 1"):
        execute(make_cfg(*QUICK, "requests=2"), tmp_path / "a")
    with pytest.raises(ConfigError, match="num_shadows=3"):
        execute(make_cfg(*QUICK, "eval.evaluators.ulira.num_shadows=3"), tmp_path / "b")


def test_class_forgetting_shadows_retrain_without_the_whole_class(make_cfg, tmp_path):
    import json

    from data.splits import index_digest, keep_matrix
    from runner.pipeline import load_dataset

    cfg = make_cfg(*QUICK, "method=ft", "forget=class", "forget.class_id=1", cache_dir=tmp_path / "c")
    result = execute(cfg, tmp_path / "a")
    assert 0.0 <= result["metrics"]["unlearned"]["ulira_auc"] <= 100.0
    ds = load_dataset(cfg)
    labels = ds.population[1].numpy()
    keep = keep_matrix(2, len(labels))
    expected = {index_digest(np.flatnonzero(keep[s] & (labels != 1))) for s in range(2)}
    found = {json.loads((d / "manifest.json").read_text())["spec"]["train_idx_sha256"]
             for d in (tmp_path / "c" / "shadow").glob("[!.]*")}
    assert found == expected
