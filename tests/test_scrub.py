"""SCRUB: the distillation term by hand, the teacher frozen, max steps only in the first epochs."""

import math

import pytest
import torch

from methods import scrub
from runner.__main__ import execute
from runner.config import ConfigError
from tiny import HP, linear_model, tiny_data

from conftest import FAST


def test_distill_kl_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 ln 3/2 + 1/4 ln 1/2
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(scrub.distill_kl(s, t, T=1.0)) == pytest.approx(expected)
    # T scales logits down and the loss up by T^2: T = 2 on doubled logits gives 4x
    assert float(scrub.distill_kl(2 * s, 2 * t, T=2.0)) == pytest.approx(4 * expected)
    assert float(scrub.distill_kl(t, t, T=4.0)) == pytest.approx(0.0, abs=1e-7)


def test_first_epochs_stream():
    stream = scrub.FirstEpochs([1, 2, 3], 2)
    assert [list(stream) for _ in range(4)] == [[1, 2, 3], [1, 2, 3], [], []]


def test_the_teacher_stays_frozen_in_eval_mode():
    pair = scrub.StudentTeacher(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)))
    pair.train()
    assert pair.student.training and not pair.teacher.training
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    out = pair(torch.randn(4, 3))
    assert out.shape == (4, 6)
    out[:, :3].sum().backward()
    assert all(p.grad is None for p in pair.teacher.parameters())


def test_scrub_moves_the_student_and_returns_it():
    data = tiny_data(True)
    model = linear_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    out = scrub.unlearn(model, data, max_steps=2, alpha=0.5, gamma=0.5, temperature=4.0,
                        **{**HP, "epochs": 3, "lr": 0.5})
    assert isinstance(out, torch.nn.Sequential) and not out.training
    assert any(not torch.equal(out.state_dict()[k], v) for k, v in original.items())


def test_scrub_in_a_run_and_needs_the_retain_set(make_cfg, tmp_path):
    result = execute(make_cfg(*FAST, "method=scrub"), tmp_path / "a")
    assert result["metrics"]["unlearned"]["test_acc"] > 80.0
    with pytest.raises(ConfigError, match="needs the retain set"):
        execute(make_cfg(*FAST, "method=scrub", "method.use_retain=false"), tmp_path / "b")
