"""Sequential unlearning requests (`requests=k`): every forget sample is requested exactly once,
each request sees the right retain set and oracle, and AMUN / AMUN-A get the right D_A."""

import functools
import json

import numpy as np
import pytest

import methods.amun
import methods.rl
from data.splits import index_digest
from runner.__main__ import execute
from runner.cache import state_digest
from runner.config import ConfigError
from runner.pipeline import request_chunks
from tiny import linear_model

from conftest import FAST

N_TRAIN, N_FORGET = 1437, 144  # digits, forget 10 %
QUICK = (*FAST, "train.epochs=2", "method.epochs=1")  # what is checked here is who sees what
AMUN = ("method.attack.eps_init=auto", "method.attack.auto_base=0.25")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the original and the oracles are trained once."""
    return tmp_path_factory.mktemp("cache")


def _recording(monkeypatch, module):
    """Wrap module.unlearn so each call's UnlearnData is kept (the real method still runs)."""
    calls = []
    real = module.unlearn

    @functools.wraps(real)
    def unlearn(model, data, **kwargs):
        calls.append(data)
        return real(model, data, **kwargs)

    # functools.wraps copies what the method declares (unlearn.prepares, needs_retain)
    monkeypatch.setattr(module, "unlearn", unlearn)
    return calls


def test_request_chunks_partition_the_forget_set_in_order():
    idx = np.random.RandomState(0).permutation(23)
    chunks = request_chunks(idx, 5)
    assert [len(c) for c in chunks] == [5, 5, 5, 4, 4]
    np.testing.assert_array_equal(np.concatenate(chunks), idx)
    with pytest.raises(ConfigError, match="at least one"):
        request_chunks(idx, 24)


def test_every_sample_is_forgotten_once_against_a_shrinking_retain_set(make_cfg, tmp_path,
                                                                       monkeypatch, cache):
    calls = _recording(monkeypatch, methods.rl)
    result = execute(make_cfg(*QUICK, "method=rl", "requests=3",
                              cache_dir=cache), tmp_path / "seq")
    forget_idx = np.load(tmp_path / "seq" / "forget_idx.npy")
    assert len(calls) == 3
    requested = np.concatenate([c.forget_idx for c in calls])
    np.testing.assert_array_equal(requested, forget_idx)  # each once, in the sampler's order
    seen = []
    for data in calls:
        seen.extend(data.forget_idx)
        # D_R of a request: every training sample not yet requested, nothing forgotten earlier.
        np.testing.assert_array_equal(data.retain_idx, np.setdiff1d(np.arange(N_TRAIN), seen))
        assert len(data.forget_y) == len(data.forget_idx) and len(data.retain_y) == len(data.retain_idx)

    reports = json.loads((tmp_path / "seq" / "metrics.json").read_text())["requests"]
    assert [r["n_forget"] for r in reports] == [48, 96, 144]
    assert [r["n_retain"] for r in reports] == [N_TRAIN - 48, N_TRAIN - 96, N_TRAIN - 144]
    assert [r["forget_idx_sha256"] for r in reports] == [index_digest(forget_idx[:n])
                                                        for n in (48, 96, 144)]
    assert len({r["retrain_key"] for r in reports}) == 3  # one oracle per request
    for r in reports:
        assert set(r["metrics"]) == {"unlearned", "retrain", "original"}
        assert {"forget_acc", "retain_acc", "test_acc", "mia_efficacy"} <= set(r["metrics"]["unlearned"])
    assert result["metrics"] == reports[-1]["metrics"] and result["avg_gap"] == reports[-1]["avg_gap"]
    assert set(result["stage_seconds"]) >= {"unlearn/1", "unlearn/2", "unlearn/3", "evaluate/3"}
    # The report draws the metrics over the requests (runner.figures.requests_figure).
    from runner.report import main as report
    assert report([str(tmp_path / "seq")]) == 0
    assert (tmp_path / "seq" / "requests.png").stat().st_size > 10_000

    # The last request's oracle is the one-shot run's: trained on the same retain set.
    one_shot = execute(make_cfg(*QUICK, "method=rl", cache_dir=cache),
                       tmp_path / "once")
    assert one_shot["cache_hits"]["retrain"] and "requests" not in one_shot
    assert one_shot["cache_keys"]["retrain"] == reports[-1]["retrain_key"]


@pytest.mark.parametrize("method, artifacts", [("amun", 1), ("amun_a", 2)])
def test_amun_reuses_the_original_adversarial_set_and_amun_a_rebuilds_it(
        make_cfg, tmp_path, monkeypatch, cache, method, artifacts):
    calls = _recording(monkeypatch, methods.amun)
    before = set((cache / "adversarial").glob("*"))
    # logger=wandb (offline): one W&B step per request, and the summary of the last
    result = execute(make_cfg(*QUICK, *AMUN, f"method={method}", "requests=2", "logger=wandb",
                              cache_dir=cache), tmp_path / "run")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(set((cache / "adversarial").glob("*")) - before) == artifacts
    assert [len(c.forget_idx) for c in calls] == [72, 72]
    for data in calls:
        adv_x, adv_y = data.adversarial
        assert 0 < len(adv_y) <= len(data.forget_y)  # the fooled samples of this request only
        assert adv_x.shape[1:] == data.forget_x.shape[1:]
    adv = result["adversarial"]
    assert sum(adv["eps_histogram"].values()) == round(N_FORGET * adv["success_rate"] / 100)
    assert adv["model_calls_per_sample"] > 1
    if method == "amun_a":
        assert isinstance(adv["cache_key"], list) and len(adv["cache_key"]) == 2


def test_amun_a_with_one_request_is_amun(make_cfg, tmp_path, cache):
    runs = [execute(make_cfg(*QUICK, *AMUN, f"method={m}", cache_dir=cache), tmp_path / m)
            for m in ("amun", "amun_a")]
    assert runs[0]["metrics"]["unlearned"] == runs[1]["metrics"]["unlearned"]
    assert runs[0]["cache_keys"]["adversarial"] == runs[1]["cache_keys"]["adversarial"]


def test_bad_requests_fail_before_any_training(make_cfg, tmp_path):  # own cache: stays empty
    with pytest.raises(ConfigError, match="requests must be an integer"):
        execute(make_cfg(*FAST, "requests=0"), tmp_path / "a")
    with pytest.raises(ConfigError, match="each request needs at least one"):
        execute(make_cfg(*FAST, "requests=145"), tmp_path / "b")
    assert not (tmp_path / "cache" / "original").exists()
    with pytest.raises(ConfigError, match="adversarial_from"):
        execute(make_cfg(*FAST, "method=amun", "method.adversarial_from=latest"), tmp_path / "c")


def test_state_digest_follows_the_weights():
    a, b = linear_model(), linear_model()
    assert state_digest(a) == state_digest(b)
    next(b.parameters()).data.add_(1e-6)
    assert state_digest(a) != state_digest(b)
