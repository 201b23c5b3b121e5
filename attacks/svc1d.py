"""sklearn's RBF SVC on one feature, bit for bit, about 3x faster: what MIA-efficacy fits.

`SVC(kernel="rbf").fit` spends nearly all its time in libsvm's kernel: one scalar `exp` per
entry of a column, about 2 x 20,000 columns on 20,000 samples. The solver itself only ever sees
those entries as float32 (libsvm caches `Qfloat` = float). So this module computes the whole
kernel matrix once, vectorized in torch (float64, on every CPU thread), with libsvm's own formula
`exp(-gamma * (x_i^2 + x_j^2 - 2 x_i x_j))`, and fits `SVC(kernel="precomputed")` on it: the same
solver on the same float32 entries takes the same path and returns the same support vectors,
dual coefficients and intercept, bit for bit (tests/test_svc1d.py checks it).

Why the entries are the same: torch's vectorized exp and the C library's exp that libsvm calls
may differ in the last bit or two of a double, but a double that is more than a few units in the
last place away from the midpoint between two float32 values rounds to the same float32 either
way. Entries closer than that (about 20 of 400 million here) are recomputed with Python's
`math.exp`, which is the same C library function that libsvm calls.

Predictions use the same idea: the decision value of each distinct target is computed in torch
and, where it is so close to zero (within a bound on the rounding difference, see `_margin`) that
its sign could differ from libsvm's, the target's kernel row is recomputed with `math.exp` and
predicted by libsvm itself.

The kernel matrix takes n^2 x 8 bytes (3.2 GB for 20,000 samples): above `max_gib` the plain
RBF SVC runs instead (same predictions, slower).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn import config_context
from sklearn.svm import SVC

ROWS = 32  # rows of the kernel matrix per block: the block's temporaries stay in cache
# An entry is recomputed with the C library's exp when its double lies within SLACK units in the
# last place of a float32 rounding tie: far more than the two by which torch's exp (1 ulp) and
# the C library's (under 1 ulp) can differ.
SLACK = 16
TILE = 512  # square tiles of the mirror copy


def _libm_entry(xi: float, xj: float, gamma: float) -> float:
    """libsvm's training kernel entry, with the C library's exp (what `kernel_rbf` computes)."""
    return math.exp(-gamma * ((xi * xi + xj * xj) - 2 * (xi * xj)))


def kernel_matrix(x: np.ndarray, gamma: float) -> np.ndarray:
    """float64 (n, n) K with K_ij rounding to the float32 that libsvm's K_ij rounds to.

    Computed as exp(gamma * (2 x_i x_j - (x_i^2 + x_j^2))), which is libsvm's
    exp(-gamma * ((x_i^2 + x_j^2) - 2 (x_i x_j))) bit for bit (scaling by 2 and negating a
    difference round exactly), on the upper triangle, then mirrored below in square tiles."""
    n = len(x)
    out = np.empty((n, n))
    xt, o = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(out)
    sq, twice = xt * xt, 2 * xt
    # Whether some entry could be so small that float32 makes it subnormal (then every entry is
    # checked for it too); never for MIA-efficacy's confidences in [0, 1] with gamma = 1.
    tiny = n and math.exp(-gamma * (float(x.max()) - float(x.min())) ** 2) < 2.0 ** -120
    for i in range(0, n, ROWS):
        j = min(i + ROWS, n)
        block = o[i:j, i:]
        torch.add(sq[i:j, None], sq[None, i:], out=block)
        torch.sub(torch.outer(twice[i:j], xt[i:]), block, out=block)
        if gamma != 1.0:
            block.mul_(gamma)
        block.exp_()
        for r, c in _unsure(block, tiny).tolist():
            block[r, c] = _libm_entry(x[i + r], x[i + c], gamma)
    for a in range(0, n, TILE):  # lower triangle = upper transposed, tile by tile
        for b in range(a, n, TILE):
            if a == b:  # a diagonal tile: only its upper triangle was computed
                tile = o[a:a + TILE, a:a + TILE]
                tile.copy_(torch.triu(tile) + torch.triu(tile, 1).t())
            else:
                o[b:b + TILE, a:a + TILE].copy_(o[a:a + TILE, b:b + TILE].t())
    return out


def _unsure(block: torch.Tensor, tiny: bool) -> torch.Tensor:
    """(row, column) of the entries whose float32 rounding another exp could change: the 29 bits
    a double loses in float32 (all in its low 32-bit word) are within SLACK units of the tie
    2^28; with `tiny`, also the entries float32 would make subnormal."""
    low = block.view(torch.int32)[:, 0::2]  # little-endian: the low word of each double
    near = torch.bitwise_and(low + (SLACK - 2 ** 28), 2 ** 29 - 1) < 2 * SLACK
    return torch.nonzero(near | (block < 2.0 ** -120) if tiny else near)


def _margin(coef: np.ndarray, kernel_abs_sum: np.ndarray, intercept: float) -> np.ndarray:
    """Bound on |torch's decision value - libsvm's|: both sum n products whose kernel factors
    may differ by a few ulp; each sum's rounding error is at most n u sum|c_k K_k| (u = 2^-53)."""
    n = len(coef)
    return (2.0 ** -48 + 2 * n * 2.0 ** -53) * (kernel_abs_sum + abs(intercept)) + 1e-300


def _finite(values, what: str) -> np.ndarray:
    """`values` as a flat float64 array; NaN or inf raise, as sklearn's SVC does (a NaN decision
    value would otherwise count as a non-member)."""
    out = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(out).all():
        raise ValueError(f"SVC on 1-D features: the {what} contain NaN or inf "
                         f"({int((~np.isfinite(out)).sum())} of {len(out)})")
    return out


class SVC1D:
    """`SVC(C=C, kernel="rbf", gamma=gamma)` fit on 1-D features `x` (labels `y`), predicting
    exactly what that SVC predicts. `gamma`: a number ("auto" on one feature is 1.0)."""

    def __init__(self, C: float, gamma: float = 1.0, max_gib: float = 4.0):
        self.C, self.gamma, self.max_gib = C, float(gamma), max_gib

    def fit(self, x: np.ndarray, y: np.ndarray) -> "SVC1D":
        self.x = _finite(x, "training features")
        self.precomputed = len(self.x) ** 2 * 8 <= self.max_gib * 2 ** 30
        if not self.precomputed:
            self.svc = SVC(C=self.C, kernel="rbf", gamma=self.gamma).fit(self.x[:, None], y)
            return self
        kernel = kernel_matrix(self.x, self.gamma)
        # Finite by construction (skip sklearn's pass over n^2 entries); a small kernel cache:
        # a precomputed column is a row lookup, and libsvm's LRU bookkeeping of a large cache
        # costs more than it saves (the cache size changes no result, only the time).
        with config_context(assume_finite=True):
            self.svc = SVC(C=self.C, kernel="precomputed", cache_size=2).fit(kernel, y)
        return self

    def decision_function(self, target: np.ndarray) -> np.ndarray:
        """The decision values (torch's sums; equal to libsvm's up to `_margin`)."""
        return self._decision(np.asarray(target, dtype=np.float64).ravel())[0]

    def _decision(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sv = torch.from_numpy(self.x[self.svc.support_])
        coef = torch.from_numpy(self.svc.dual_coef_[0])
        b = float(self.svc.intercept_[0])
        dec, bound = np.empty(len(t)), np.empty(len(t))
        tt = torch.from_numpy(t)
        for i in range(0, len(t), ROWS * 8):
            d = tt[i:i + ROWS * 8, None] - sv[None, :]
            k = (d * d).mul_(-self.gamma).exp_()  # libsvm's predict kernel: exp(-gamma (t - s)^2)
            dec[i:i + ROWS * 8] = (k @ coef).numpy() + b
            bound[i:i + ROWS * 8] = _margin(coef.numpy(), (k @ coef.abs()).numpy(), b)
        return dec, bound

    def predict(self, target: np.ndarray) -> np.ndarray:
        """What the RBF SVC predicts on `target` (1-D)."""
        t = _finite(target, "targets")
        if not self.precomputed:
            return self.svc.predict(t[:, None])
        values, inverse = np.unique(t, return_inverse=True)
        dec, bound = self._decision(values)
        labels = self.svc.classes_[(dec > 0).astype(int)]
        unsure = np.flatnonzero(np.abs(dec) <= bound)
        self.decided_by_libsvm = len(unsure)  # distinct targets too close to call in torch
        if len(unsure):  # libsvm decides these, on rows of exact kernel values
            rows = np.zeros((len(unsure), len(self.x)))
            sv = self.svc.support_
            for r, u in enumerate(unsure):
                rows[r, sv] = [math.exp(-self.gamma * ((values[u] - s) * (values[u] - s)))
                               for s in self.x[sv]]
            labels[unsure] = self.svc.predict(rows)
        return labels[inverse.ravel()]
