"""MIA-NN: nearest classes, features by hand, the SVC score, and the evaluator on a class split."""

import numpy as np
import pytest

from attacks.mia_nn import mia_nn_score, nearest_classes, nn_features
from runner.__main__ import execute

from conftest import FAST


def test_nearest_classes_and_features_by_hand():
    # The oracle on two samples of forgotten class 0: mean probabilities (0.5, 0.05, 0.3, 0.15)
    oracle = np.array([[0.6, 0.0, 0.3, 0.1], [0.4, 0.1, 0.3, 0.2]])
    classes = nearest_classes(oracle, forget_class=0, k=2)
    np.testing.assert_array_equal(classes, [2, 3])  # class 0 itself is never a neighbour
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    np.testing.assert_array_equal(nn_features(probs, classes), [[0.3, 0.4], [0.1, 0.1]])


def test_mia_nn_score_separable_and_indistinguishable():
    rng = np.random.RandomState(0)
    members = rng.normal(0.0, 0.05, (100, 2)) + [0.8, 0.1]
    nonmembers = rng.normal(0.0, 0.05, (60, 2)) + [0.1, 0.8]
    assert mia_nn_score(members, nonmembers, C=1.0, folds=5, seed=0) == 100.0
    same = rng.normal(0.0, 0.05, (400, 2))
    score = mia_nn_score(same[:200], same[200:], C=1.0, folds=5, seed=0)
    assert 35.0 < score < 65.0  # chance, within the noise of 400 samples
    with pytest.raises(ValueError, match="at least 5"):
        mia_nn_score(members[:3], nonmembers, C=1.0, folds=5, seed=0)


def test_mia_nn_in_a_class_unlearning_run(make_cfg, tmp_path):
    result = execute(make_cfg(*FAST, "eval=class_unlearning", "forget=class", "forget.class_id=1",
                              "method=retrain"), tmp_path / "a")
    metrics = result["metrics"]
    assert metrics["unlearned"]["mia_nn"] == metrics["retrain"]["mia_nn"]  # retrain is the oracle
    assert 0.0 <= metrics["original"]["mia_nn"] <= 100.0
    assert "mia_nn" in result["gap_metrics"] and result["avg_gap"] == 0.0
