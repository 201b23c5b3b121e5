"""MIA-efficacy (SalUn, Fan et al., ICLR 2024; called "MIS" in the AMUN paper).

Exactly what is computed: the feature of a sample is the model's softmax confidence on its true
label. An SVC (RBF kernel, C=3, gamma="auto") is trained to tell members (`num_members` retain
samples, drawn with `np.random.RandomState(seed).choice`; by default as many as the test set has,
SalUn's choice: 10,000 on CIFAR) from non-members (the whole test set).
MIA-efficacy = the percentage of forget samples the SVC predicts to be non-members. Higher means
the model treats D_F more like unseen data; the retrain oracle's value is the target.

How it is computed: `attacks.svc1d.SVC1D`, which returns exactly sklearn's RBF SVC's predictions
(the same support vectors and coefficients, bit for bit) from a kernel matrix computed once in
torch, at most `kernel_gib` GiB of it (3.2 for 10,000 + 10,000); `kernel_gib: 0` (or a larger
problem) runs sklearn's `SVC(kernel="rbf")` itself, the old path.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import SVC

from attacks.signals import true_softmax
from attacks.svc1d import SVC1D
from runner.typed import Count, NonNegative, Positive

KERNEL_GIB = 4.0  # the most memory the kernel matrix of the fast path may take


def true_label_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """softmax(logits)[i, y_i] as float64 numpy (`attacks.signals.true_softmax`)."""
    return true_softmax(logits, y)


def member_predictions(member: np.ndarray, nonmember: np.ndarray, target: np.ndarray, *,
                       C: float, kernel_gib: float = KERNEL_GIB) -> np.ndarray:
    """1 for each `target` sample an RBF SVC (gamma "auto": 1 on one feature) fit on member (1)
    vs non-member (0) features calls a member, else 0; `kernel_gib` as in the module docstring."""
    features = np.concatenate([member, nonmember])
    labels = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    if kernel_gib == 0:
        svc = SVC(C=C, kernel="rbf", gamma="auto").fit(features.reshape(-1, 1), labels)
        return svc.predict(target.reshape(-1, 1))
    return SVC1D(C, gamma=1.0, max_gib=kernel_gib).fit(features, labels).predict(target)


def mia_efficacy_score(member: np.ndarray, nonmember: np.ndarray, target: np.ndarray, *,
                       C: float, kernel_gib: float = KERNEL_GIB) -> float:
    """% of `target` predicted non-member (`member_predictions`)."""
    return float(np.mean(member_predictions(member, nonmember, target, C=C,
                                            kernel_gib=kernel_gib) == 0) * 100.0)


def mia_efficacy(model: torch.nn.Module, ctx, *, num_members: Count | None, C: Positive,
                 seed: int, kernel_gib: NonNegative = KERNEL_GIB) -> dict[str, float]:
    """MIA-efficacy of `model` on the run's forget set (see the module docstring)."""
    conf = {s: true_label_confidence(ctx.logits(model, s), ctx.labels(s))
            for s in ("forget", "retain", "test")}
    n = min(num_members or len(conf["test"]), len(conf["retain"]))
    members = conf["retain"][np.random.RandomState(seed).choice(len(conf["retain"]), n, replace=False)]
    called = member_predictions(members, conf["test"], conf["forget"], C=C, kernel_gib=kernel_gib)
    ctx.keep("mia_efficacy_member", "forget", called, np.float32)
    return {"mia_efficacy": float(np.mean(called == 0) * 100.0)}


mia_efficacy.metric_names = ("mia_efficacy",)
