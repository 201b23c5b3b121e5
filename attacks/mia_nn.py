"""MIA-NN, the nearest-neighbour-class membership attack on class unlearning ("On the Necessity of
Output Distribution Reweighting for Effective Class Unlearning", arXiv 2506.20893).

A model retrained without class f sends f's samples mostly to f's nearest classes; an unlearned
model that leaks puts a different amount of mass there on the samples it was trained on. Exactly
what is computed (the paper's protocol is unpublished; this is our reading):
- nearest classes: the `num_neighbors` classes j != f with the largest mean softmax probability
  that the run's retrain oracle gives the forget-class training samples;
- features of a sample: the evaluated model's softmax probabilities on those classes, in that order;
- members: the forget-class training samples (the original trained on them); non-members: the
  forget-class test samples. Both are subsampled to the smaller count (seeded), and an SVC (RBF,
  `C`, gamma="scale") is scored by stratified `folds`-fold cross-validation;
- `mia_nn` = mean cross-validated accuracy (percent) of telling members from non-members with the
  evaluated model's features. 50 = the model treats the trained-on samples of f like unseen ones;
  the oracle's value is the target, and Avg. Gap can use it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from runner.typed import Positive

log = logging.getLogger("attacks.mia_nn")


def nearest_classes(oracle_probs: np.ndarray, forget_class: int, k: int) -> np.ndarray:
    """The k classes j != forget_class with the largest mean probability in oracle_probs (n, C),
    most probable first."""
    mean = np.asarray(oracle_probs, dtype=np.float64).mean(axis=0)
    mean[forget_class] = -np.inf
    return np.argsort(-mean, kind="stable")[:k]


def nn_features(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(n, k): each sample's probabilities on `classes`, in that order."""
    return np.asarray(probs, dtype=np.float64)[:, classes]


def mia_nn_score(members: np.ndarray, nonmembers: np.ndarray, *, C: float, folds: int,
                 seed: int) -> float:
    """Mean stratified-CV accuracy (%) of an RBF SVC telling members from non-members, on balanced
    subsamples of min(len) each."""
    n = min(len(members), len(nonmembers))
    if n < folds:
        raise ValueError(f"MIA-NN needs at least {folds} members and non-members, got {n}")
    rng = np.random.RandomState(seed)
    x = np.concatenate([members[rng.choice(len(members), n, replace=False)],
                        nonmembers[rng.choice(len(nonmembers), n, replace=False)]])
    y = np.r_[np.ones(n), np.zeros(n)]
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(SVC(C=C, kernel="rbf", gamma="scale"), x, y, cv=cv).mean() * 100)


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def mia_nn(model, ctx, *, num_neighbors: int, C: Positive, folds: int, seed: int) -> dict[str, float]:
    """MIA-NN of `model` on the run's forgotten class (see the module docstring)."""
    if ctx.split.class_id is None:  # not a class forgetting
        return {}
    f = ctx.split.class_id
    classes = ctx.memo(("mia_nn_classes", num_neighbors), lambda: _neighbours(ctx, f, num_neighbors))
    in_class = (ctx.labels("test") == f).cpu().numpy()
    members = nn_features(_probs(ctx.logits(model, "forget")), classes)
    nonmembers = nn_features(_probs(ctx.logits(model, "test"))[in_class], classes)
    test_rows = len(ctx.train_y) + np.flatnonzero(in_class)
    for j, c in enumerate(classes):
        ctx.keep(f"mia_nn_p{c}", "forget", members[:, j])
        ctx.keep(f"mia_nn_p{c}", test_rows, nonmembers[:, j])
    return {"mia_nn": mia_nn_score(members, nonmembers, C=C, folds=folds, seed=seed)}


def _neighbours(ctx, forget_class: int, k: int) -> np.ndarray:
    classes = nearest_classes(_probs(ctx.logits(ctx.oracle, "forget")), forget_class, k)
    log.info("MIA-NN: the oracle sends class %d mostly to classes %s", forget_class, classes.tolist())
    return classes


mia_nn.metric_names = ()
mia_nn.class_metric_names = ("mia_nn",)
