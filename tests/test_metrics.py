"""Metric functions pinned to values computed by hand."""

import math

import numpy as np
import pytest
import torch

from attacks.mis import mia_efficacy, mia_efficacy_score, true_label_confidence
from data.splits import Split, class_forget
from runner.evaluate import EvalContext, accuracies, avg_gap


class Fixed(torch.nn.Module):
    """Returns preset logits for image i, identified by its first pixel value i."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def _ctx(train_y, test_y, split):
    n, m = len(train_y), len(test_y)
    img = lambda idx: torch.as_tensor(idx, dtype=torch.uint8)[:, None, None, None].repeat(1, 1, 2, 2)
    return EvalContext(img(range(n)), torch.as_tensor(train_y), img(range(n, n + m)),
                       torch.as_tensor(test_y), split, num_classes=3, batch_size=2)


def test_accuracies_by_hand():
    # train: 4 samples, forget = {0, 3}; test: 2 samples.
    logits = [[9, 0, 0], [0, 9, 0], [0, 0, 9], [9, 0, 0], [0, 9, 0], [9, 0, 0]]
    train_y, test_y = [0, 1, 1, 2], [1, 2]
    split = Split("random", np.array([0, 3]), np.array([1, 2]))
    out = accuracies(Fixed(logits), _ctx(train_y, test_y, split))
    # forget: sample 0 right, sample 3 wrong -> 50; retain: 1 right, 2 wrong -> 50; test: 1 of 2.
    # forget confidence: softmax of the true label, e^9 / (e^9 + 2) and 1 / (e^9 + 2), averaged.
    e9 = math.exp(9)
    confidence = 100 * (e9 / (e9 + 2) + 1 / (e9 + 2)) / 2
    assert out == pytest.approx({"forget_acc": 50.0, "retain_acc": 50.0, "test_acc": 50.0,
                                 "forget_confidence": confidence}, rel=1e-6)


def test_class_accuracies_split_the_test_set():
    logits = [[9, 0, 0], [0, 9, 0], [0, 0, 9], [0, 9, 0], [9, 0, 0], [0, 0, 9], [0, 9, 0]]
    train_y, test_y = [0, 1, 2, 0], [0, 2, 1]
    split = class_forget(np.array(train_y), 0, 3)
    out = accuracies(Fixed(logits), _ctx(train_y, test_y, split))
    # forget = train {0, 3}: right, wrong; retain {1, 2}: both right. test class 0: sample 4 right; others: 5 right, 6 right.
    assert out["forget_acc"] == 50.0 and out["retain_acc"] == 100.0
    assert out["test_forget_acc"] == 100.0 and out["test_retain_acc"] == 100.0
    assert out["test_acc"] == 100.0


def test_true_label_confidence_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    conf = true_label_confidence(logits, torch.tensor([1, 0]))
    np.testing.assert_allclose(conf, [0.75, 0.5])


def test_mia_efficacy_score_by_hand():
    members = np.full(50, 0.99) + np.linspace(0, 0.005, 50)
    nonmembers = np.full(50, 0.2) + np.linspace(0, 0.05, 50)
    # 3 of 4 targets look like non-members -> 75 %.
    assert mia_efficacy_score(members, nonmembers, np.array([0.21, 0.22, 0.23, 0.995]), C=3.0) == 75.0
    assert mia_efficacy_score(members, nonmembers, np.array([0.99, 0.991]), C=3.0) == 0.0


def test_mia_efficacy_evaluator_uses_forget_retain_and_test():
    n = 40  # 20 retain samples with confident right logits, 20 forget samples like the test set
    logits = [[6, 0, 0]] * 20 + [[0.2, 0, 0]] * 20 + [[0.2, 0, 0]] * 20
    train_y, test_y = [0] * n, [0] * 20
    split = Split("random", np.arange(20, 40), np.arange(20))
    out = mia_efficacy(Fixed(logits), _ctx(train_y, test_y, split), num_members=10, C=3.0, seed=0)
    assert out == {"mia_efficacy": 100.0}


def test_avg_gap_by_hand():
    a = {"forget_acc": 90.0, "retain_acc": 100.0, "test_acc": 80.0, "mia_efficacy": 10.0}
    b = {"forget_acc": 80.0, "retain_acc": 99.0, "test_acc": 81.0, "mia_efficacy": 20.0}
    assert avg_gap(a, b, list(a)) == pytest.approx((10 + 1 + 1 + 10) / 4)
