"""Membership signals and RMIA, pinned to values computed by hand."""

import math

import numpy as np
import pytest
import torch

from attacks.rmia import balanced_metrics, rmia_scores, tpr_at_fpr
from attacks.signals import lira_phi, taylor_soft_margin, true_softmax
from data.splits import SplitError, keep_matrix


def test_true_softmax():
    # exp(ln 3) / (1 + exp(ln 3)) = 3/4; also from torch tensors
    np.testing.assert_allclose(true_softmax(np.array([[0.0, math.log(3)]]), [1]), [0.75])
    np.testing.assert_allclose(true_softmax(torch.tensor([[0.0, math.log(3)]]), torch.tensor([0])),
                               [0.25])


def test_lira_phi_is_the_log_odds_of_the_true_label_and_stable():
    # p = (1/5, 3/5, 1/5): phi = log(3/5) - log(2/5) = log 1.5
    np.testing.assert_allclose(lira_phi(np.array([[0.0, math.log(3), 0.0]]), [1]), [math.log(1.5)])
    # p_y rounds to 1 in float64; phi is still 1000 - 0 (naive log(p_y) - log(1 - p_y) gives inf)
    np.testing.assert_allclose(lira_phi(np.array([[1000.0, 0.0]]), [0]), [1000.0])
    np.testing.assert_allclose(lira_phi(np.array([[0.0, 1000.0]]), [0]), [-1000.0])


def test_taylor_soft_margin_by_hand():
    # z = (2, 0) / 2 = (1, 0); T(1 - 0.6) = 1 + 0.4 + 0.08 + 0.064/6; T(0) = 1
    t = 1 + 0.4 + 0.16 / 2 + 0.064 / 6
    got = taylor_soft_margin(np.array([[2.0, 0.0]]), [0], temperature=2.0, margin=0.6, terms=4)
    np.testing.assert_allclose(got, [t / (t + 1)])
    # A very negative logit: T(-4) = 1 - 4 + 8 - 64/6 < 0, kept as RMIA's code keeps it.
    t_neg = 1 - 4 + 8 - 64 / 6
    got = taylor_soft_margin(np.array([[0.0, -8.0]]), [0], temperature=2.0, margin=0.0, terms=4)
    np.testing.assert_allclose(got, [1 / (1 + t_neg)])
    # One term: T = 1 for every class, p = 1 / C whatever the logits.
    np.testing.assert_allclose(taylor_soft_margin(np.array([[5.0, 1.0, -2.0]]), [2],
                                                  temperature=1.0, margin=0.6, terms=1), [1 / 3])


def test_rmia_score_counts_population_ratios_strictly_above_gamma():
    target_z = np.array([0.5, 0.2, 0.4, 0.1])
    ref_z = np.array([[0.25, 0.1, 0.4, 0.3], [0.25, 0.3, 0.4, 0.1]])  # mean (0.25, 0.2, 0.4, 0.2)
    # ratio_z = (2, 1, 1, 0.5). x = z: score(2) counts ratio_z < 1 -> 1/4 (2 / 1 = 2 is a tie with
    # gamma: not counted); score(1) counts ratio_z < 0.5 -> 0; score(0.5) -> 0.
    np.testing.assert_allclose(rmia_scores(target_z, ref_z, target_z, ref_z, gamma=2.0),
                               [0.25, 0.0, 0.0, 0.0])
    # An x with ratio 4 (0.8 / 0.2): 4/2, 4/1, 4/1, 4/0.5 -> three of four exceed gamma = 2 strictly.
    np.testing.assert_allclose(rmia_scores([0.8], [[0.2], [0.2]], target_z, ref_z, gamma=2.0), [0.75])
    np.testing.assert_allclose(rmia_scores([0.8], [[0.2], [0.2]], target_z, ref_z, gamma=1.0), [1.0])


def test_rmia_score_with_negative_ratios_compares_pairwise():
    # ratio_z = (-1, 1, 2); x with ratio 4: 4/-1 = -4, 4/1 = 4 > 2, 4/2 = 2 (not > 2) -> 1/3
    target_z, ref_z = np.array([-1.0, 1.0, 2.0]), np.ones((2, 3))
    np.testing.assert_allclose(rmia_scores([4.0], [[1.0], [1.0]], target_z, ref_z, gamma=2.0), [1 / 3])


def test_tpr_at_fpr():
    pos, neg = np.array([0.9, 0.8, 0.3]), np.array([0.85, 0.1, 0.2, 0.05])
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(1 / 3)   # only 0.9 is above every negative
    assert tpr_at_fpr(pos, neg, 0.2) == pytest.approx(1 / 3)    # under one false positive in four
    # One false positive (0.85) allowed: the threshold drops to 0.3 and catches every positive.
    assert tpr_at_fpr(pos, neg, 0.25) == pytest.approx(1.0)


def test_balanced_metrics_by_hand():
    separated = {"forget": np.array([3.0, 4.0]), "retain": np.array([5.0, 6.0, 7.0]),
                 "test": np.array([1.0, 2.0])}
    m = balanced_metrics(separated)
    assert m["rmia_ft_auc"] == m["rmia_fr_auc"] == m["rmia_rt_auc"] == 100.0
    assert m["rmia_ft_tpr_at_1pct_fpr"] == m["rmia_ft_tpr_at_0p1pct_fpr"] == 100.0
    # Forget scored exactly like test: the FT AUC of a perfect unlearning, 50.
    same = {"forget": np.array([1.0, 2.0]), "retain": np.array([1.5, 0.5]), "test": np.array([1.0, 2.0])}
    m = balanced_metrics(same)
    assert m["rmia_ft_auc"] == 50.0
    # retain (0.5, 1.5) vs forget (1, 2): pairs won 1 of 4 -> 25 %
    assert m["rmia_fr_auc"] == 25.0


def test_keep_matrix_is_the_papers_and_balanced():
    keep = keep_matrix(8, 50, seed=0)
    np.random.seed(0)
    expected = np.random.uniform(0, 1, (8, 50)).argsort(0) < 4
    np.testing.assert_array_equal(keep, expected)
    assert (keep.sum(axis=0) == 4).all()                    # each sample IN for exactly M/2 models
    assert not np.array_equal(keep, keep_matrix(8, 50, seed=1))
    with pytest.raises(SplitError, match="even"):
        keep_matrix(3, 10)


def test_rmia_sorted_count_equals_the_pairwise_definition():
    rng = np.random.RandomState(0)
    for _ in range(20):
        target_z, ref_z = rng.randn(200), rng.randn(3, 200)
        ref_z[:, :5] = np.abs(ref_z[:, :5])
        target_z[:5] = 0.0                          # some ratio_z exactly 0
        target_z[5:10] = target_z[10:15]            # and ties
        ref_z[:, 5:10] = ref_z[:, 10:15]
        target_x, ref_x = target_z[:50], ref_z[:, :50]
        ratio_x = target_x / ref_x.mean(0)
        ratio_z = target_z / ref_z.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            brute = (ratio_x[:, None] / ratio_z[None, :] > 2.0).mean(axis=1)
        np.testing.assert_allclose(rmia_scores(target_x, ref_x, target_z, ref_z, gamma=2.0), brute)


def test_tpr_at_fpr_keeps_every_threshold_of_tied_scores():
    # Tied scores in equal steps: roc_curve's default would drop the point (FPR 0.4, TPR 0.5).
    pos, neg = np.array([10.0, 0, 1, 2, 3, 4]), np.array([0.0, 1, 2, 3, 4])
    assert tpr_at_fpr(pos, neg, 0.45) == pytest.approx(0.5)
