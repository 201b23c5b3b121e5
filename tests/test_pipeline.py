"""End to end on the bundled digits: the runs a user makes, and the outcomes they rely on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attacks.mis import mia_efficacy_score, true_label_confidence
from runner.__main__ import execute
from runner.report import load_results, make_table

from conftest import FAST

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _run(make_cfg, tmp_path, shared_cache, name, *overrides):
    cfg = make_cfg(*FAST, *overrides, cache_dir=shared_cache)
    return execute(cfg, tmp_path / name)


def test_second_identical_run_trains_nothing_and_matches(make_cfg, tmp_path, shared_cache):
    first = _run(make_cfg, tmp_path, shared_cache, "a", "method=ft")
    second = _run(make_cfg, tmp_path, shared_cache, "b", "method=ft")
    assert second["cache_hits"] == {"original": True, "retrain": True}
    assert second["cache_keys"] == first["cache_keys"]
    assert second["metrics"] == first["metrics"]
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["metrics"] == second["metrics"]
    assert set(saved["stage_seconds"]) == {"data", "original", "retrain", "unlearn", "evaluate"}
    assert saved["config"]["method"]["name"] == "ft" and saved["git_commit"]
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "forget_idx.npy"),
                                  np.random.RandomState(1).choice(1437, 144, replace=False))


def test_cache_key_follows_what_determines_the_model(make_cfg, tmp_path, shared_cache):
    base = _run(make_cfg, tmp_path, shared_cache, "a", "method=retrain")["cache_keys"]
    # The method, the evaluators and the logger do not change the original or the oracle.
    other = _run(make_cfg, tmp_path, shared_cache, "b", "method=rl",
                 "eval.evaluators.mia_efficacy.C=1.0")["cache_keys"]
    assert other == base
    # Another forget set changes the oracle only; another recipe changes both.
    new_forget = _run(make_cfg, tmp_path, shared_cache, "c", "method=retrain",
                      "forget.seed=10")["cache_keys"]
    assert new_forget["original"] == base["original"] and new_forget["retrain"] != base["retrain"]
    new_recipe = _run(make_cfg, tmp_path, shared_cache, "d", "method=retrain",
                      "train.epochs=7")["cache_keys"]
    assert new_recipe["original"] != base["original"] and new_recipe["retrain"] != base["retrain"]


def test_retrain_treats_the_forget_set_like_the_test_set(make_cfg, tmp_path, shared_cache):
    result = _run(make_cfg, tmp_path, shared_cache, "a", "method=retrain")
    m = result["metrics"]["unlearned"]
    assert m == result["metrics"]["retrain"] and result["avg_gap"] == 0.0
    # 144 forget samples: a binomial std of about 1.5 points at 96 % accuracy.
    assert abs(m["forget_acc"] - m["test_acc"]) < 6.0
    assert m["retain_acc"] > m["forget_acc"]  # a trained-on set is fit better than an unseen one
    assert result["metrics"]["original"]["forget_acc"] > m["forget_acc"] - 1.0


def test_retrain_mia_efficacy_is_near_its_test_set_value(make_cfg, tmp_path, shared_cache):
    # The same SVC, fit on half of the test set, scores the other (unseen) half: that is the
    # MIA-efficacy of data the model never saw, which the oracle's forget set should match.
    from runner.pipeline import load_dataset, train_or_load, RunState
    from runner.cache import Cache
    from data.splits import make_split
    cfg = make_cfg(*FAST, "method=retrain", cache_dir=shared_cache)
    ds = load_dataset(cfg)
    split = make_split(cfg.forget, ds.train_y.numpy(), 10)
    oracle = train_or_load(cfg, Cache(cfg.paths.cache_dir), "retrain", ds, split.retain_idx,
                           __import__("torch").device("cpu"), RunState())
    from runner.evaluate import predict
    conf = lambda x, y: true_label_confidence(predict(oracle, x, 512), y)
    forget = conf(ds.train_x[split.forget_idx], ds.train_y[split.forget_idx])
    retain = conf(ds.train_x[split.retain_idx], ds.train_y[split.retain_idx])
    test = conf(ds.test_x, ds.test_y)
    half = np.random.RandomState(0).permutation(len(test))
    fit_half, held_out = test[half[:180]], test[half[180:]]
    on_forget = mia_efficacy_score(retain, fit_half, forget, C=3.0)
    on_unseen = mia_efficacy_score(retain, fit_half, held_out, C=3.0)
    reported = execute(cfg, tmp_path / "a")["metrics"]["unlearned"]["mia_efficacy"]
    assert abs(on_forget - on_unseen) < 15.0, (on_forget, on_unseen)
    assert abs(reported - on_unseen) < 15.0, (reported, on_unseen)


def test_ga_without_retain_destroys_test_accuracy(make_cfg, tmp_path, shared_cache):
    result = _run(make_cfg, tmp_path, shared_cache, "a", "method=ga", "method.use_retain=false",
                  "method.lr=0.1")
    original, unlearned = result["metrics"]["original"], result["metrics"]["unlearned"]
    assert original["test_acc"] > 90.0
    assert unlearned["test_acc"] < 40.0 and unlearned["forget_acc"] < 40.0


def test_wandb_offline_run_is_written_and_finished(make_cfg, tmp_path, shared_cache):
    import wandb
    cfg = make_cfg("logger=wandb", "train.epochs=8", "device=cpu", "method=ft",
                   cache_dir=shared_cache)
    execute(cfg, tmp_path / "run")
    assert wandb.run is None  # finished: the next job of a sweep starts a fresh run
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_a_rerun_into_the_same_dir_never_leaves_the_old_result(make_cfg, tmp_path, shared_cache,
                                                               monkeypatch):
    _run(make_cfg, tmp_path, shared_cache, "a", "method=ft")

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("runner.pipeline.avg_gap", crash)  # fails after every stage ran
    with pytest.raises(RuntimeError, match="boom"):
        _run(make_cfg, tmp_path, shared_cache, "a", "method=ft")
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["status"] == "failed"


def test_missing_dataset_files_fail_before_training(make_cfg, tmp_path):
    from data.datasets import DatasetError
    cfg = make_cfg(*FAST, "dataset=cifar10", "model=small_cnn", "train=tiny")
    with pytest.raises(DatasetError, match="data_batch_1"):
        execute(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "failed" and "data_batch_1" in saved["error"]
    assert not (Path(cfg.paths.cache_dir) / "original").exists()


def test_multirun_shares_models_and_reports_one_table(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "runner", "-m", "method=retrain,ft,rl,ga", "dataset=digits",
           *FAST, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(sweep)
    assert sorted(r["method"] for r in results) == ["ft", "ga", "retrain", "rl"]
    assert sum(not r["cache_hits"]["original"] for r in results) == 1  # trained once
    assert sum(not r["cache_hits"]["retrain"] for r in results) == 1
    assert len({r["cache_keys"]["original"] for r in results}) == 1
    report = subprocess.run([sys.executable, "-m", "runner.report", str(sweep)], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert [line.split("|")[3].strip() for line in report.splitlines()[2:6]] == \
        ["retrain", "ft", "rl", "ga"]
    assert (sweep / "table.csv").exists() and (sweep / "table.md").exists()


def test_report_marks_failed_runs_and_averages_seeds():
    ok = lambda seed, acc: {"status": "ok", "config": {
        "forget": {"kind": "random", "fraction": 0.1}, "dataset": {"name": "digits"},
        "method": {"name": "ga", "use_retain": False}}, "avg_gap": 1.0,
        "metrics": {"unlearned": {"forget_acc": acc, "retain_acc": 90.0, "test_acc": 80.0,
                                  "mia_efficacy": 10.0}}}
    failed = {**ok(3, 0.0), "status": "failed"}
    rows = make_table([ok(1, 10.0), ok(2, 20.0), failed])
    assert rows[1][:4] == ["digits", "10%", "ga (no D_R)", "15.00 ± 7.07"]
    assert rows[1][-1] == "2/3"
