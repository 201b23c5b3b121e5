"""U-LiRA (Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense
of Privacy", arXiv 2403.01218): can an attacker tell the unlearned model from the retrained one?

Exactly what is computed. Shadow model s is reference model s (trained with the run's recipe on the
population half IN_s, see `runner.reference`). Its forget set is the target's forget set within
IN_s, F_s = D_F & IN_s; it is unlearned by the method under test with the run's hyper-parameters
(retain set IN_s - F_s when the method uses one), and retrained from scratch on IN_s - F_s. For a
target forget sample x, the shadows with x in F_s give phi(x) (`attacks.signals.lira_phi`) under
"unlearned" and under "retrained"; a Gaussian is fitted to each. The score of a model on x is the
log-likelihood ratio log N(phi; mu_u, sd_u) - log N(phi; mu_r, sd_r) (pdfs, not cdfs). Metrics, in
percent, telling the evaluated model (positives) from the run's retrain oracle (negatives) on D_F:
`ulira_auc` and `ulira_acc` (accuracy of the sign of the score). 50 = indistinguishable; the
oracle's own value is 50 by construction.

Choices the paper leaves open: with few shadows per sample the per-example variances are noisy, so
`fix_variance: true` (the default) uses one variance per hypothesis pooled over samples (LiRA's
"global variance"); a sample in no shadow's forget set (in fewer than two, with per-sample
variances) is left out.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from sklearn.metrics import roc_auc_score

from attacks.signals import lira_phi
from runner.typed import Range

MIN_STD = 1e-6  # keeps a zero sample variance from producing an infinite likelihood


def fit_gaussians(phi: np.ndarray, mask: np.ndarray, *, fix_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and std of phi (shadows, n) over the shadows where mask (shadows, n) is
    True. With fix_variance, one std pooled over all (shadow, sample) deviations."""
    count = mask.sum(axis=0)
    mean = np.where(mask, phi, 0.0).sum(axis=0) / np.maximum(count, 1)
    dev2 = np.where(mask, (phi - mean) ** 2, 0.0)
    if fix_variance:
        dof = max(int(mask.sum()) - int((count > 0).sum()), 1)
        std = np.full(phi.shape[1], np.sqrt(dev2.sum() / dof))
    else:
        std = np.sqrt(dev2.sum(axis=0) / np.maximum(count - 1, 1))
    return mean, np.maximum(std, MIN_STD)


def log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def likelihood_ratio(phi: np.ndarray, unlearned: tuple, retrained: tuple) -> np.ndarray:
    """log N(phi; unlearned) - log N(phi; retrained), per sample; each hypothesis is (mean, std)."""
    return log_normal_pdf(phi, *unlearned) - log_normal_pdf(phi, *retrained)


def distinguish(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """AUC and sign accuracy (percent) of scores on positives (the evaluated model) vs negatives
    (the oracle)."""
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scores = np.r_[pos, neg]
    acc = (np.sum(pos > 0) + np.sum(neg <= 0)) / len(scores)
    return {"ulira_auc": float(roc_auc_score(labels, scores) * 100.0), "ulira_acc": float(acc * 100.0)}


def ulira(model, ctx, *, num_shadows: Annotated[int, Range(ge=2)], fix_variance: bool) -> dict[str, float]:
    """U-LiRA of `model` against the run's oracle on D_F (see the module docstring), with the
    first `num_shadows` reference models as shadows (`ctx.shadows`)."""
    shadows = ctx.shadows(num_shadows)
    forget_y = ctx.labels("forget")
    # Samples some shadow had to forget (two, for a per-sample variance).
    in_forget = shadows.mask.sum(axis=0) >= (1 if fix_variance else 2)
    unlearned = fit_gaussians(shadows.phi_unlearned, shadows.mask, fix_variance=fix_variance)
    retrained = fit_gaussians(shadows.phi_retrained, shadows.mask, fix_variance=fix_variance)

    def score(m) -> np.ndarray:
        phi = lira_phi(ctx.logits(m, "forget"), forget_y)
        return likelihood_ratio(phi, unlearned, retrained)[in_forget]

    own = score(model)
    ctx.keep("ulira_llr", np.asarray(ctx.split.forget_idx)[in_forget], own)
    return distinguish(own, score(ctx.oracle))


ulira.metric_names = ("ulira_auc", "ulira_acc")
ulira.uses = ("shadows",)  # ctx.shadows(num_shadows): the U-LiRA shadows (runner.shadows)
