"""TRW's class similarity and tilted target distribution, and the method on a tiny class split."""

import pytest
import torch

from methods import trw
from runner.__main__ import execute
from runner.config import ConfigError
from tiny import linear_model, tiny_data

from conftest import FAST


def _probs(n=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 2, dim=1)


def test_tilted_target_is_a_distribution_without_the_forget_class():
    probs, sim = _probs(), torch.tensor([0.1, 0.0, 0.6, 0.3])
    q = trw.tilted_target(probs, 1, sim, beta=10.0)
    torch.testing.assert_close(q.sum(1), torch.ones(5))
    assert (q[:, 1] == 0).all() and (q >= 0).all()


def test_beta_zero_is_the_renormalized_distribution():
    probs = _probs()
    q = trw.tilted_target(probs, 1, torch.tensor([0.1, 0.0, 0.6, 0.3]), beta=0.0)
    expected = probs.clone()
    expected[:, 1] = 0
    torch.testing.assert_close(q, expected / expected.sum(1, keepdim=True))


def test_large_beta_concentrates_on_the_most_similar_class():
    probs, sim = _probs(), torch.tensor([0.1, 0.0, 0.6, 0.3])
    mass = [trw.tilted_target(probs, 1, sim, beta=b)[:, 2] for b in (0.0, 3.0, 10.0, 100.0)]
    for lo, hi in zip(mass, mass[1:]):
        assert (hi >= lo).all()  # more tilt, more mass on class 2
    assert (mass[-1] > 0.999).all()
    # By hand, one sample: p = (0.2, 0.5, 0.2, 0.1), s = (0, 0, 1, 0), beta = ln 3:
    # p~ = (0.4, 0, 0.4, 0.2), tilt -> (0.4, 0, 1.2, 0.2) / 1.8
    q = trw.tilted_target(torch.tensor([[0.2, 0.5, 0.2, 0.1]]), 1, torch.tensor([0.0, 0, 1, 0]),
                          beta=float(torch.log(torch.tensor(3.0))))
    torch.testing.assert_close(q, torch.tensor([[0.4, 0.0, 1.2, 0.2]]) / 1.8)


def test_class_similarity_is_symmetric_and_ignores_the_forget_class():
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    cos = trw.class_cosines(w, pca_dim=4)
    torch.testing.assert_close(cos, cos.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(5, dtype=cos.dtype))
    s = trw.class_similarity(w, 2, pca_dim=4, temperature=0.1)
    assert s[2] == 0 and float(s.sum()) == pytest.approx(1.0)
    others = [j for j in range(5) if j != 2]
    assert int(torch.argmax(s)) == others[int(torch.argmax(cos[2, others]))]
    # Two rows pointing the same way (after centring) are each other's nearest class.
    w2 = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]])
    assert int(torch.argmax(trw.class_similarity(w2, 0, pca_dim=3, temperature=0.1))) == 1


class FC(torch.nn.Module):
    """The linear classifier of tiny.py with the `fc` attribute TRW reads."""

    def __init__(self):
        super().__init__()
        self.flat, self.fc = torch.nn.Flatten(), linear_model()[1]

    def forward(self, x):
        return self.fc(self.flat(x))


@pytest.mark.parametrize("use_retain", [True, False])
def test_trw_moves_the_forget_class_to_the_other_classes(use_retain):
    data = tiny_data(use_retain)
    keep = data.forget_y == data.forget_y[0]
    data.forget_x, data.forget_y = data.forget_x[keep], data.forget_y[keep]
    model = FC()
    out = trw.unlearn(model, data, beta=10.0, pca_dim=None, temperature=0.1, epochs=20, lr=0.5,
                      momentum=0.9, weight_decay=0.0, batch_size=8, decay_every=20, decay_gamma=0.1)
    f = int(data.forget_y[0])
    with torch.no_grad():
        pred = out(data.forget_x.float() / 255).argmax(1)
    assert (pred != f).float().mean() > 0.9


def test_trw_needs_a_class_forget_set(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="forget=class"):
        execute(make_cfg(*FAST, "method=trw"), tmp_path / "a")
    with pytest.raises(ValueError, match="one whole class"):
        trw.unlearn(FC(), tiny_data(True), beta=1.0, pca_dim=None, temperature=0.1, epochs=1,
                    lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=8, decay_every=1,
                    decay_gamma=0.1)


def test_trw_curve_scores_soft_labels_by_their_argmax():
    """A run's curves score TRW's soft targets (n, C) against their most likely class: the
    accuracy is a percentage of the forget set, not a broadcast (n,) == (n, C) comparison."""
    from runner.curves import recording

    data = tiny_data(False)
    keep = data.forget_y == data.forget_y[0]
    data.forget_x, data.forget_y = data.forget_x[keep], data.forget_y[keep]
    with recording() as curves:
        trw.unlearn(FC(), data, beta=10.0, pca_dim=None, temperature=0.1, epochs=3, lr=0.5,
                    momentum=0.9, weight_decay=0.0, batch_size=len(data.forget_x),
                    decay_every=20, decay_gamma=0.1)
    (points,) = curves.points.values()
    assert [e for e, _, _ in points] == [1, 2, 3]
    assert all(0.0 <= acc <= 100.0 for _, _, acc in points)
