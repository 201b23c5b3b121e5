"""The fast 1-D RBF SVC of MIA-efficacy (attacks/svc1d.py) is sklearn's SVC, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from attacks.mis import member_predictions
from attacks.svc1d import SLACK, SVC1D, _unsure, kernel_matrix


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.beta(8, 1, n), rng.beta(4, 1, n)]
    return x, np.r_[np.ones(n), np.zeros(n)], rng


def _same_fit(fast: SVC1D, ref: SVC) -> None:
    np.testing.assert_array_equal(fast.svc.support_, ref.support_)
    np.testing.assert_array_equal(fast.svc.dual_coef_, ref.dual_coef_)  # bit for bit
    np.testing.assert_array_equal(fast.svc.intercept_, ref.intercept_)
    assert fast.svc.n_iter_.tolist() == ref.n_iter_.tolist()


@pytest.mark.parametrize("C", [3.0, 0.5])
def test_same_solution_and_predictions_as_sklearns_rbf_svc(C):
    x, y, rng = _data(1500)
    fast, ref = SVC1D(C).fit(x, y), SVC(C=C, kernel="rbf", gamma="auto").fit(x[:, None], y)
    _same_fit(fast, ref)
    target = np.r_[rng.beta(6, 1, 3000), x[:200]]  # some targets are training values
    np.testing.assert_array_equal(fast.predict(target), ref.predict(target[:, None]))
    np.testing.assert_allclose(fast.decision_function(target), ref.decision_function(target[:, None]),
                               rtol=0, atol=1e-9)


def test_duplicates_and_saturated_confidences():
    """Confidences of a memorizing model: many exactly 1.0, ties across members and non-members."""
    x, y, rng = _data(1000, seed=1)
    x[rng.random(len(x)) < 0.3] = 1.0
    x[::7] = np.round(x[::7], 2)
    fast, ref = SVC1D(3.0).fit(x, y), SVC(C=3.0, kernel="rbf", gamma="auto").fit(x[:, None], y)
    _same_fit(fast, ref)
    target = np.r_[np.ones(50), np.round(rng.random(500), 2), x[:100]]
    np.testing.assert_array_equal(fast.predict(target), ref.predict(target[:, None]))


def test_targets_on_the_decision_boundary_are_decided_by_libsvm():
    x, y, _ = _data(800, seed=2)
    fast, ref = SVC1D(3.0).fit(x, y), SVC(C=3.0, kernel="rbf", gamma="auto").fit(x[:, None], y)
    # a sign change of the decision function, narrowed by bisection to adjacent doubles
    grid = np.linspace(0, 1, 2001)
    dec = ref.decision_function(grid[:, None])
    k = int(np.flatnonzero(np.diff(np.sign(dec)) != 0)[0])
    lo, hi = grid[k], grid[k + 1]
    for _ in range(80):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        same_as_lo = np.sign(ref.decision_function([[mid]])[0]) == np.sign(dec[k])
        lo, hi = (mid, hi) if same_as_lo else (lo, mid)
    target = np.array([lo, hi, np.nextafter(lo, 0), np.nextafter(hi, 2)])
    assert ref.predict(target[:, None])[0] != ref.predict(target[:, None])[1]
    np.testing.assert_array_equal(fast.predict(target), ref.predict(target[:, None]))
    assert fast.decided_by_libsvm >= 2  # the two sides of the boundary were not guessed


def test_other_gamma_and_the_plain_path():
    x, y, rng = _data(600, seed=3)
    target = rng.random(400)
    for gamma in (50.0, 400.0):  # 400: entries below float32's normal range (checked too)
        fast = SVC1D(1.0, gamma=gamma).fit(x, y)
        ref = SVC(C=1.0, kernel="rbf", gamma=gamma).fit(x[:, None], y)
        _same_fit(fast, ref)
        np.testing.assert_array_equal(fast.predict(target), ref.predict(target[:, None]))
    plain = SVC1D(3.0, max_gib=1e-6).fit(x, y)  # too large for the budget: sklearn's SVC
    assert not plain.precomputed
    np.testing.assert_array_equal(
        plain.predict(target),
        SVC(C=3.0, kernel="rbf", gamma="auto").fit(x[:, None], y).predict(target[:, None]))
    members, nonmembers = x[:600], x[600:]
    np.testing.assert_array_equal(member_predictions(members, nonmembers, target, C=3.0),
                                  member_predictions(members, nonmembers, target, C=3.0,
                                                     kernel_gib=0))


def test_kernel_entries_round_to_libsvms_float32():
    x, _, _ = _data(300, seed=4)
    K = kernel_matrix(x, 1.0)
    libm = np.array([[math.exp(-1.0 * ((a * a + b * b) - 2 * (a * b))) for b in x] for a in x])
    np.testing.assert_array_equal(K.astype(np.float32), libm.astype(np.float32))
    np.testing.assert_array_equal(K, K.T)


def test_entries_near_a_float32_tie_are_flagged():
    tie = 0.75 + 2.0 ** -25  # halfway between two float32 neighbours of 0.75
    near = [np.nextafter(tie, 0), tie, np.nextafter(np.nextafter(tie, 1), 1),
            tie + (SLACK - 1) * 2.0 ** -53]
    far = [0.75, tie + 2 * SLACK * 2.0 ** -53, 0.375 + 2.0 ** -27 * 0.3, 1.0]
    block = torch.tensor([near + far], dtype=torch.float64)
    assert _unsure(block, tiny=False)[:, 1].tolist() == [0, 1, 2, 3]
    assert _unsure(torch.tensor([[1e-40, 0.5]], dtype=torch.float64), tiny=True)[:, 1].tolist() == [0]


def test_non_finite_features_raise_like_sklearn():
    x, y, _ = _data(50)
    bad = x.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        SVC(C=3.0, kernel="rbf", gamma="auto").fit(bad[:, None], y)
    with pytest.raises(ValueError, match="NaN or inf"):
        SVC1D(3.0).fit(bad, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        SVC1D(3.0).fit(x, y).predict(np.array([0.5, np.inf]))
