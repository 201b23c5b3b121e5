"""Membership signals: functions of a model's logits on labelled samples, one value per sample.

All take float logits (n, C) and int labels (n,) as numpy or torch and return float64 numpy (n,).
Each is computed from the logits in a numerically stable form, never by taking logs of rounded
probabilities.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_arrays(logits, y) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().double().numpy()
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)


def true_softmax(logits, y) -> np.ndarray:
    """softmax(logits)_y: the probability the model gives the true label."""
    z, y = _as_arrays(logits, y)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p[np.arange(len(y)), y] / p.sum(axis=1)


def lira_phi(logits, y) -> np.ndarray:
    """LiRA's logit-scaled confidence phi = log p_y - log sum_{j != y} p_j (Carlini et al. 2022),
    computed as z_y - logsumexp_{j != y} z_j, which is the same quantity without rounding p_y to 1."""
    z, y = _as_arrays(logits, y)
    rows = np.arange(len(y))
    z_y = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    top = others.max(axis=1)
    return z_y - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))


def taylor_soft_margin(logits, y, *, temperature: float, margin: float, terms: int) -> np.ndarray:
    """RMIA's signal (Zarifzadeh et al. 2024, their code's `taylor-soft-margin`): with z = logits /
    temperature and T(u) = sum_{k < terms} u^k / k! (the softmax's exp replaced by its Taylor
    polynomial), p = T(z_y - margin) / (T(z_y - margin) + sum_{j != y} T(z_j)). With an even
    number of terms T is an odd-degree polynomial, negative for u below about -1.6 (RMIA's default,
    4 terms, included); the RMIA code keeps it that way, and so do we: the score only compares
    ratios of this signal between models on the same sample."""
    z, y = _as_arrays(logits, y)
    z = z / temperature
    rows = np.arange(len(y))

    def taylor(u: np.ndarray) -> np.ndarray:
        out, term = np.ones_like(u), np.ones_like(u)
        for k in range(1, terms):
            term = term * u / k
            out = out + term
        return out

    t = taylor(z)
    t_true = taylor(z[rows, y] - margin)
    t_others = t.sum(axis=1) - t[rows, y]
    return t_true / (t_true + t_others)
