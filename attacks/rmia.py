"""RMIA, online (Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks", ICML 2024),
as the AMUN paper evaluates unlearning with it.

Exactly what is computed, for a target model and M reference models trained on random halves of
the population (train + test; `data.splits.keep_matrix`, each sample IN for exactly M/2 of them):
- signal p(x): RMIA's soft-margin Taylor softmax (`attacks.signals.taylor_soft_margin`);
- Pr(x) = mean of p over all M reference models (IN and OUT: the online attack);
- ratio(x) = p_target(x) / Pr(x);
- score(x) = fraction of population points z with ratio(x) / ratio(z) > gamma (strictly).
Metrics, each the mean over 3 balanced subsamples (seeds 0, 1, 2) of n = min(|D_F|, |D_T|, |D_R|)
samples per group, in percent: FT AUC (forget as positives vs test), FR AUC (retain vs forget), RT
AUC (retain vs test), and the FT TPR at 1 % and 0.1 % FPR. A perfect unlearning gives FT AUC 50.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from attacks.signals import taylor_soft_margin
from runner.typed import Count, Positive

PAIRS = {"ft": ("forget", "test"), "fr": ("retain", "forget"), "rt": ("retain", "test")}
LOW_FPRS = {"1": 0.01, "0p1": 0.001}  # metric name tags: 1 % and 0.1 %


def rmia_scores(target_x: np.ndarray, ref_x: np.ndarray, target_z: np.ndarray, ref_z: np.ndarray,
                *, gamma: float) -> np.ndarray:
    """score(x) for each x, from the target's signal (n,) and the reference models' (M, n) on the
    samples x, and the same (P,), (M, P) on the population z."""
    ratio_x = np.asarray(target_x, np.float64) / np.asarray(ref_x, np.float64).mean(axis=0)
    ratio_z = np.asarray(target_z, np.float64) / np.asarray(ref_z, np.float64).mean(axis=0)
    # ratio_x / ratio_z > gamma (gamma > 0), counted with sorts instead of P comparisons per x:
    # for ratio_z > 0 it is ratio_z < ratio_x / gamma; for ratio_z < 0 (a negative Taylor signal)
    # the division flips it, ratio_z > ratio_x / gamma; for ratio_z = 0 it holds iff ratio_x > 0.
    # NaN compares false everywhere. (Equal to the pairwise rule up to rounding exactly at the
    # boundary, where x / z and x / gamma round differently; exact for gamma a power of two.)
    bound = ratio_x / gamma
    pos, neg = np.sort(ratio_z[ratio_z > 0]), np.sort(ratio_z[ratio_z < 0])
    count = (np.searchsorted(pos, bound, side="left")
             + len(neg) - np.searchsorted(neg, bound, side="right")
             + np.count_nonzero(ratio_z == 0) * (ratio_x > 0))
    return np.where(np.isnan(ratio_x), 0, count) / len(ratio_z)


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """The highest TPR of a threshold on the scores whose FPR is at most `fpr`."""
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    f, t, _ = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)  # keep every threshold
    return float(t[f <= fpr].max())


def balanced_metrics(scores: dict[str, np.ndarray], seeds=(0, 1, 2)) -> dict[str, float]:
    """AUCs of the three pairs and FT's TPR at low FPR (percent), averaged over balanced
    subsamples: each seed draws n = the smallest group's size from every group."""
    n = min(len(v) for v in scores.values())
    out: dict[str, list[float]] = {}
    for seed in seeds:
        rng = np.random.RandomState(seed)
        pick = {k: v[rng.choice(len(v), n, replace=False)] for k, v in scores.items()}
        for name, (pos, neg) in PAIRS.items():
            labels = np.r_[np.ones(n), np.zeros(n)]
            out.setdefault(f"rmia_{name}_auc", []).append(
                roc_auc_score(labels, np.r_[pick[pos], pick[neg]]))
        for tag, fpr in LOW_FPRS.items():
            out.setdefault(f"rmia_ft_tpr_at_{tag}pct_fpr", []).append(
                tpr_at_fpr(pick["forget"], pick["test"], fpr))
    return {k: float(np.mean(v) * 100.0) for k, v in out.items()}


def rmia(model, ctx, *, gamma: Positive, temperature: Positive, margin: float,
         terms: Count) -> dict[str, float]:
    """RMIA's FT / FR / RT AUCs and FT TPR at low FPR of `model` (see the module docstring). The
    reference models' outputs come from the run's cache (`ctx.reference()`)."""
    ref = ctx.reference()
    labels = ref.labels

    def signal(logits: np.ndarray) -> np.ndarray:
        return taylor_soft_margin(logits, labels, temperature=temperature, margin=margin,
                                  terms=terms)

    ref_signal = ctx.memo(("rmia_ref", temperature, margin, terms),
                          lambda: np.stack([signal(l) for l in ref.logits]))
    target = signal(ctx.population_logits(model))
    score = rmia_scores(target, ref_signal, target, ref_signal, gamma=gamma)
    n_train = len(ctx.train_y)
    groups = {"forget": score[ctx.split.forget_idx], "retain": score[ctx.split.retain_idx],
              "test": score[n_train:]}
    ctx.keep("rmia_score", "population", score)
    return balanced_metrics(groups)


rmia.metric_names = ("rmia_ft_auc", "rmia_fr_auc", "rmia_rt_auc", "rmia_ft_tpr_at_1pct_fpr",
                     "rmia_ft_tpr_at_0p1pct_fpr")
rmia.uses = ("reference",)  # ctx.reference(): the run's reference models (runner.reference)

