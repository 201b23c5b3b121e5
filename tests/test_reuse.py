"""Evaluations and unlearned models as cache artifacts (runner/reuse.py): what is reused computes
exactly what a fresh run computes, and a change to what determines it is a miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.__main__ import execute

from conftest import FAST

QUICK = (*FAST, "train.epochs=2")


def _samples(run_dir):
    with np.load(run_dir / "samples.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _same_samples(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cached_evaluations_equal_fresh_ones(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    runs = {}
    # the old path: no reuse, and MIA-efficacy by sklearn's RBF SVC itself
    for name, extra in (("old", ["cache.evaluations=false", "cache.unlearned=false",
                                 "eval.evaluators.mia_efficacy.kernel_gib=0"]),
                        ("miss", []), ("hit", [])):
        runs[name] = execute(make_cfg(*QUICK, "method=rl", *extra, cache_dir=cache),
                             tmp_path / name)
    assert "evaluation.original" not in runs["old"]["cache_hits"]
    assert not runs["miss"]["cache_hits"]["evaluation.original"]
    assert all(runs["hit"]["cache_hits"][k] for k in
               ("unlearned", "evaluation.unlearned", "evaluation.retrain", "evaluation.original"))
    for name in ("miss", "hit"):
        assert runs[name]["metrics"] == runs["old"]["metrics"]
        assert runs[name]["avg_gap"] == runs["old"]["avg_gap"]
        _same_samples(_samples(tmp_path / name), _samples(tmp_path / "old"))
    # the reused unlearned model is the one the method made
    for name in ("miss", "hit"):
        a = torch.load(tmp_path / name / "unlearned.pt", weights_only=True)
        b = torch.load(tmp_path / "old" / "unlearned.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_an_evaluation_depends_on_is_a_miss(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = execute(make_cfg(*QUICK, "method=retrain", cache_dir=cache), tmp_path / "a")
    # retrain's unlearned model is the oracle itself: one evaluation serves both roles
    assert first["cache_hits"]["evaluation.retrain"] and not first["cache_hits"]["evaluation.unlearned"]
    assert first["metrics"]["unlearned"] == first["metrics"]["retrain"]
    # another evaluator setting: nothing is reused
    c1 = execute(make_cfg(*QUICK, "method=retrain", "eval.evaluators.mia_efficacy.C=1.0",
                          cache_dir=cache), tmp_path / "b")
    assert not any(c1["cache_hits"][f"evaluation.{r}"] for r in ("unlearned", "original"))
    # another forget set: another oracle and split, nothing reused; another method's
    # hyper-parameter: another unlearned model, the original and the oracle reused
    seed = execute(make_cfg(*QUICK, "method=retrain", "forget.seed=10", cache_dir=cache),
                   tmp_path / "c")
    assert not seed["cache_hits"]["evaluation.original"]
    ft = [execute(make_cfg(*QUICK, "method=ft", f"method.lr={lr}", cache_dir=cache),
                  tmp_path / f"ft{lr}") for lr in (0.01, 0.02)]
    assert not ft[1]["cache_hits"]["unlearned"] and not ft[1]["cache_hits"]["evaluation.unlearned"]
    assert ft[1]["cache_hits"]["evaluation.original"] and ft[1]["cache_hits"]["evaluation.retrain"]
    assert ft[1]["cache_keys"]["unlearned"] != ft[0]["cache_keys"]["unlearned"]
    assert ft[1]["metrics"]["original"] == ft[0]["metrics"]["original"] == first["metrics"]["original"]


def test_sequential_requests_reuse_their_chain(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    overrides = (*QUICK, "method=ft", "requests=2", "save_samples=false")
    first = execute(make_cfg(*overrides, cache_dir=cache), tmp_path / "a")
    second = execute(make_cfg(*overrides, cache_dir=cache), tmp_path / "b")
    old = execute(make_cfg(*overrides, "cache.unlearned=false", "cache.evaluations=false",
                           cache_dir=cache), tmp_path / "c")
    assert not first["cache_hits"]["unlearned"] and second["cache_hits"]["unlearned"]
    assert second["requests"] == first["requests"]
    assert [r["metrics"] for r in old["requests"]] == [r["metrics"] for r in first["requests"]]


@pytest.mark.parametrize("key", ["cache.evaluations", "cache.unlearned"])
def test_cache_switches_are_booleans(make_cfg, tmp_path, key):
    from runner.config import validate
    from runner.typed import ConfigError

    with pytest.raises(ConfigError, match=key):
        validate(make_cfg(*QUICK, f"{key}=maybe"))


def test_the_forget_sets_order_is_part_of_the_keys(make_cfg, tmp_path):
    """The same indices in another order give other batches: nothing is reused."""
    idx = np.random.RandomState(0).choice(1437, 100, replace=False)
    np.save(tmp_path / "a.npy", idx)
    np.save(tmp_path / "b.npy", np.sort(idx))
    cache = tmp_path / "cache"
    runs = [execute(make_cfg(*QUICK, "method=ft", "forget=indices", f"forget.path={tmp_path / f}",
                             cache_dir=cache), tmp_path / f"run{k}")
            for k, f in enumerate(("a.npy", "b.npy", "a.npy"))]
    assert runs[1]["cache_keys"]["retrain"] == runs[0]["cache_keys"]["retrain"]  # same D_R
    assert not runs[1]["cache_hits"]["unlearned"] and not runs[1]["cache_hits"]["evaluation.original"]
    assert runs[1]["cache_keys"]["unlearned"] != runs[0]["cache_keys"]["unlearned"]
    assert runs[2]["cache_hits"]["unlearned"] and runs[2]["metrics"] == runs[0]["metrics"]
