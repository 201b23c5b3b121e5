"""End to end on the bundled digits: the runs a user makes, and the outcomes they rely on."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from attacks.mis import mia_efficacy_score, true_label_confidence
from data.splits import make_split
from runner.__main__ import execute
from runner.cache import Cache
from runner.evaluate import predict
from runner.trained import RunState, load_dataset, train_or_load
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
    # An identical job reuses the unlearned model and every evaluation too (runner/reuse.py).
    assert first["cache_hits"] == {"original": False, "retrain": False, "unlearned": False,
                                   "evaluation.unlearned": False, "evaluation.retrain": False,
                                   "evaluation.original": False}
    assert second["cache_hits"] == {k: True for k in first["cache_hits"]}
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
    assert other["original"] == base["original"] and other["retrain"] == base["retrain"]
    assert other["unlearned"] != base["unlearned"]  # the method's own model
    # Another forget set changes the oracle only; another recipe changes both.
    new_forget = _run(make_cfg, tmp_path, shared_cache, "c", "method=retrain",
                      "forget.seed=10")["cache_keys"]
    assert new_forget["original"] == base["original"] and new_forget["retrain"] != base["retrain"]
    new_recipe = _run(make_cfg, tmp_path, shared_cache, "d", "method=retrain",
                      "train.epochs=7")["cache_keys"]
    assert new_recipe["original"] != base["original"] and new_recipe["retrain"] != base["retrain"]


def test_the_oracle_never_saw_the_forget_set_and_treats_it_like_test_data(make_cfg, tmp_path):
    """On digits with the shipped recipe: the oracle's loss and MIA-efficacy on D_F match unseen
    data, while the original, which trained on D_F, fits it far better (so this test fails if the
    'oracle' were the original, or were trained on D_F)."""
    cfg = make_cfg("logger=none", "device=cpu", "method=retrain")
    result = execute(cfg, tmp_path / "run")
    m = result["metrics"]["unlearned"]
    assert m == result["metrics"]["retrain"] and result["avg_gap"] == 0.0
    spec = json.loads((Cache(cfg.paths.cache_dir).path("retrain", result["cache_keys"]["retrain"])
                       / "manifest.json").read_text())["spec"]
    ds = load_dataset(cfg)
    split = make_split(cfg.forget, ds.train_y.numpy(), 10)
    assert spec["n_train"] == 1437 - 144 and spec["train_idx_sha256"] == split.digest("retain")

    state, cache, cpu = RunState(), Cache(cfg.paths.cache_dir), torch.device("cpu")
    original = train_or_load(cfg, cache, "original", ds, np.arange(1437), cpu, state)
    oracle = train_or_load(cfg, cache, "retrain", ds, split.retain_idx, cpu, state)
    assert state.cache_hits == {"original": True, "retrain": True}
    forget = (ds.train_x[split.forget_idx], ds.train_y[split.forget_idx])
    test = (ds.test_x, ds.test_y)
    loss = lambda model, xy: F.cross_entropy(predict(model, xy[0], 512), xy[1]).item()
    # The oracle's per-sample losses on D_F rank like its losses on the test set (AUC of forget vs
    # test near 0.5; the rank form of "same loss", which a mean over 144 mostly right samples,
    # dominated by its few errors, cannot test). What tells the oracle from the original (whose AUC
    # here is near 0.5 too: digits generalize) are the mean losses below and MIA-efficacy.
    per_sample = lambda model, xy: F.cross_entropy(predict(model, xy[0], 512), xy[1],
                                                   reduction="none").numpy()
    auc = roc_auc_score(np.r_[np.ones(144), np.zeros(360)],
                        np.r_[per_sample(oracle, forget), per_sample(oracle, test)])
    assert abs(auc - 0.5) < 0.1
    assert loss(oracle, forget) > 3 * loss(original, forget)
    assert loss(original, forget) < 0.5 * loss(original, test)
    # 144 forget samples: a binomial std of about 1.5 points at 97 % accuracy.
    assert abs(m["forget_acc"] - m["test_acc"]) < 6.0

    # MIA-efficacy of data the oracle never saw: the same SVC, fit on half of the test set,
    # scores the other half. The oracle's forget set must score like it; the original's lower.
    conf = lambda model, x, y: true_label_confidence(predict(model, x, 512), y)
    half = np.random.RandomState(0).permutation(360)
    members_idx = np.random.RandomState(0).choice(len(split.retain_idx), 180, replace=False)

    def efficacy(model, target):
        members = conf(model, ds.train_x[split.retain_idx], ds.train_y[split.retain_idx])
        nonmembers = conf(model, ds.test_x, ds.test_y)
        return mia_efficacy_score(members[members_idx], nonmembers[half[:180]],
                                  target(model, nonmembers), C=3.0)

    on_unseen = efficacy(oracle, lambda model, t: t[half[180:]])
    on_forget = efficacy(oracle, lambda model, t: conf(model, *forget))
    original_on_forget = efficacy(original, lambda model, t: conf(model, *forget))
    assert abs(on_forget - on_unseen) < 10.0, (on_forget, on_unseen)
    assert abs(m["mia_efficacy"] - on_unseen) < 10.0, (m["mia_efficacy"], on_unseen)
    assert original_on_forget < on_forget, (original_on_forget, on_forget)


def test_ga_without_retain_destroys_test_accuracy(make_cfg, tmp_path, shared_cache):
    # At lr 0.1, unconstrained ascent on D_F (no D_R to hold the model) wrecks it; the shipped
    # digits lr (conf/method_dataset/ga_digits.yaml) is tuned for Avg. Gap with D_R instead.
    result = _run(make_cfg, tmp_path, shared_cache, "a", "method=ga", "method.use_retain=false",
                  "method.lr=0.1")
    original, unlearned = result["metrics"]["original"], result["metrics"]["unlearned"]
    assert original["test_acc"] > 90.0
    assert unlearned["test_acc"] < 40.0 and unlearned["forget_acc"] < 40.0


def test_wandb_offline_run_is_written_and_finished(make_cfg, tmp_path, shared_cache, monkeypatch):
    """A real offline W&B run: named by the job's overrides, in the sweep's group, of the method's
    job type; the per-epoch curves of every model trained in the run and the figures are charted;
    the models are artifacts with log_models; the status (and a failed run's error) is in the
    summary."""
    import wandb
    from wandb.sdk.wandb_run import Run

    seen = {"logged": set(), "artifacts": {}}
    log, log_artifact, finish = Run.log, Run.log_artifact, Run.finish

    def spy_log(run, data, *args, **kwargs):
        seen["logged"] |= set(data)
        return log(run, data, *args, **kwargs)

    def spy_artifact(run, artifact, *args, **kwargs):
        if artifact.type == "model":  # W&B stores logged tables as artifacts too
            seen["artifacts"][artifact.name] = sorted(artifact.manifest.entries)
        return log_artifact(run, artifact, *args, **kwargs)

    def spy_finish(run, *args, **kwargs):
        seen.update(name=run.name, group=run.group, job_type=run.job_type)
        summary = run.summary._as_dict()
        seen["summary"] = {k: summary[k] for k in ("status", "error") if k in summary}
        return finish(run, *args, **kwargs)

    monkeypatch.setattr(Run, "log", spy_log)
    monkeypatch.setattr(Run, "log_artifact", spy_artifact)
    monkeypatch.setattr(Run, "finish", spy_finish)
    cfg = make_cfg("logger=wandb", "logger.log_models=true", "train.epochs=8", "device=cpu",
                   "method=ft", cache_dir=tmp_path / "own-cache")  # trains both models here
    result = execute(cfg, tmp_path / "run", group="compare_2026-12-02_10-00-00", label="method=ft")
    assert wandb.run is None  # finished: the next job of a sweep starts a fresh run
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (seen["name"], seen["group"], seen["job_type"]) == (
        "method=ft", "compare_2026-12-02_10-00-00", "ft")
    assert seen["summary"] == {"status": "ok"}
    for model in ("original", "retrain", "ft"):
        assert {f"curves/{model}/loss", f"curves/{model}/accuracy"} <= seen["logged"], model
    assert {"plots/roc", "plots/confidence", "unlearned/forget_acc"} <= seen["logged"]
    keys = result["cache_keys"]
    assert seen["artifacts"] == {
        f"unlearned-{runs[0].name.split('-')[-1]}": ["unlearned.pt", "unlearned.yaml"],
        f"original-{keys['original'][:24]}": ["model.pt"],
        f"retrain-{keys['retrain'][:24]}": ["model.pt"]}
    curves = (tmp_path / "run" / "curves.csv").read_text().splitlines()
    assert curves[0] == "model,epoch,loss,accuracy" and len(curves) == 1 + 8 + 8 + 10  # ft: 10

    monkeypatch.setattr("runner.pipeline.avg_gap", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        execute(make_cfg("logger=wandb", *FAST[1:], "method=ft", cache_dir=shared_cache),
                tmp_path / "failed")
    assert seen["summary"] == {"status": "failed", "error": "ZeroDivisionError: division by zero"}


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
    rows = [line.split("|") for line in report.splitlines()[2:7]]
    assert [row[3].strip() for row in rows] == ["original", "retrain", "ft", "rl", "ga"]
    # The original row is the original model of the retrain run, before unlearning.
    retrain = next(r for r in results if r["method"] == "retrain")
    assert rows[0][4].strip() == f"{retrain['metrics']['original']['forget_acc']:.2f}"
    assert (sweep / "table.csv").exists() and (sweep / "table.md").exists()
    # The regime below the table: one seed, the original and the oracle trained once each.
    assert "- digits, forget 10%, 1 seed(s): original: retain " in report
    assert "s to train a model (2 trained)" in report


def _result(seed, acc, lr=0.1, status="ok"):
    return {"status": status, "avg_gap": 1.0, "config": {
        "seed": seed, "forget": {"kind": "random", "fraction": 0.1, "seed": 1},
        "dataset": {"name": "digits"}, "method": {"name": "ga", "use_retain": False, "lr": lr},
        "paths": {"cache_dir": f"/tmp/{seed}"}},
        "metrics": {"unlearned": {"forget_acc": acc, "retain_acc": 90.0, "test_acc": 80.0,
                                  "mia_efficacy": 10.0}}}


def test_report_regime_summarizes_the_original_and_the_oracle_per_seed():
    from runner.report import regime

    def run(seed, forget, test, oracle_forget, auc, hits):
        r = _result(seed, 0.0)
        r["metrics"]["original"] = {"retain_acc": 100.0, "forget_acc": forget, "test_acc": test}
        r["metrics"]["retrain"] = {"forget_acc": oracle_forget, "test_acc": test - 1.0,
                                   "rmia_ft_auc": auc}
        r["cache_hits"] = {"original": hits, "retrain": hits}
        r["stage_seconds"] = {"original": 60.0 + seed, "retrain": 50.0 + seed}
        return r

    # Two methods on seed 1 share its models (counted once); seed 2 trained its own.
    lines = regime([run(1, 99.0, 90.0, 89.0, 51.0, False), run(1, 99.0, 90.0, 89.0, 51.0, True),
                    run(2, 97.0, 88.0, 88.0, 49.0, False), _result(3, 0.0, status="failed")])
    assert lines == [
        "- digits, forget 10%, 2 seed(s): original: retain 100.00 ± 0.00, forget 98.00 ± 1.41, "
        "test 89.00 ± 1.41, forget - test 9.00 ± 0.00; oracle: forget 88.50 ± 0.71, "
        "test 88.00 ± 1.41, forget - test 0.50 ± 0.71, RMIA FT AUC 50.00 ± 1.41; "
        "56.50 ± 5.80 s to train a model (4 trained)"]


def test_report_marks_failed_runs_and_averages_seeds():
    rows = make_table([_result(1, 10.0), _result(2, 20.0), _result(3, 0.0, status="failed"),
                       _result(4, 0.0, status="running"), _result(5, 0.0, status="preempted")])
    assert len(rows) == 2
    assert rows[1][:4] == ["digits", "10%", "ga (no D_R)", "15.00 ± 7.07"]
    assert rows[1][-1] == "2/5 (1 failed, 1 preempted, 1 unfinished)"
    # A cell with no finished run says why instead of a number.
    rows = make_table([_result(1, 0.0, lr=0.5, status="failed"), _result(2, 0.0, lr=0.5,
                                                                        status="running")])
    assert rows[1][3:] == ["failed/unfinished"] * 5 + ["0/2 (1 failed, 1 unfinished)"]


def test_report_draws_the_avg_gap_of_each_row(tmp_path):
    from runner.report import main as report

    for n, (seed, lr, gap) in enumerate([(1, 0.1, 2.0), (2, 0.1, 4.0), (1, 0.5, 1.0)]):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "metrics.json").write_text(json.dumps(
            {**_result(seed, 10.0, lr=lr), "avg_gap": gap, "run_dir": str(tmp_path / str(n))}))
    assert report([str(tmp_path)]) == 0
    assert (tmp_path / "table.md").read_text().startswith("| dataset | forget | method | forget_acc")
    assert (tmp_path / "avg_gap.png").stat().st_size > 10_000
    assert not (tmp_path / "requests.png").exists()  # one request per run


def test_report_keeps_hyper_parameters_apart_and_flags_duplicates():
    rows = make_table([_result(1, 10.0, lr=0.1), _result(2, 20.0, lr=0.1),
                       _result(1, 90.0, lr=0.001), _result(1, 92.0, lr=0.001)])
    labels = {r[2]: r for r in rows[1:]}
    assert set(labels) == {"ga (no D_R) method.lr=0.1", "ga (no D_R) method.lr=0.001"}
    assert labels["ga (no D_R) method.lr=0.1"][3] == "15.00 ± 7.07"
    assert labels["ga (no D_R) method.lr=0.001"][-1] == "2/2 (1 dup)"


def test_report_lists_jobs_of_a_sweep_that_never_started(tmp_path):
    """Expanded from multirun.yaml as Hydra's basic sweeper does (sweeper params from an experiment
    config plus command-line sweeps), matched against each job dir's .hydra/overrides.yaml, where
    Hydra writes an interpolation escaped; interpolations are never resolved."""
    from omegaconf import OmegaConf

    from runner.report import never_started
    OmegaConf.save({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"seed": "1,10"}},
        "overrides": {"task": ["method=ft,rl", "paths.cache_dir=${oc.env:NOT_SET_HERE}/c"]}}},
        tmp_path / "multirun.yaml")
    for n, (seed, method) in enumerate([(1, "ft"), (1, "rl"), (10, "ft")]):
        (tmp_path / str(n) / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"seed={seed}", f"method={method}",
                                         r"paths.cache_dir=$\{oc.env\:NOT_SET_HERE\}/c"]),
                       tmp_path / str(n) / ".hydra" / "overrides.yaml")
    assert never_started(tmp_path) == [
        r"method=rl paths.cache_dir=$\{oc.env\:NOT_SET_HERE\}/c seed=10"]


def test_report_keeps_a_failed_run_whose_config_names_an_unknown_stage():
    """A typo in `stage` fails the run before anything runs; the report still shows its row."""
    bad = {"status": "failed", "error": "stage must be unlearn, reference or ensemble",
           "config": {"stage": "ensembel", "seed": 1, "dataset": {"name": "digits"},
                      "forget": {"kind": "random", "fraction": 0.1, "seed": 1},
                      "method": {"name": "ft"}}}
    rows = make_table([_result(1, 10.0), bad])
    assert [r[2] for r in rows[1:]] == ["ga (no D_R)", "ft"]
    assert rows[2][-1] == "0/1 (1 failed)"


def test_report_csv_is_tidy_and_numeric(tmp_path):
    """table.csv loads in pandas with numeric columns: one line per row and metric."""
    import pandas as pd

    from runner.report import main
    for n, r in enumerate([_result(1, 10.0), _result(2, 20.0), _result(3, 0.0, status="failed"),
                           _result(1, 0.0, lr=0.5, status="failed")]):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "metrics.json").write_text(json.dumps({**r, "run_dir": str(n)}))
    assert main([str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "table.csv")
    assert list(frame.columns) == ["dataset", "forget", "method", "metric", "mean", "std", "n",
                                   "runs"]
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in ("mean", "std", "n", "runs"))
    acc = frame[(frame.method == "ga (no D_R) method.lr=0.1") & (frame.metric == "forget_acc")]
    assert acc[["mean", "n", "runs"]].values.tolist() == [[15.0, 2, 3]]
    assert acc["std"].item() == pytest.approx(7.0711, abs=1e-4)
    failed = frame[frame.method == "ga (no D_R) method.lr=0.5"]
    assert failed["mean"].isna().all() and (failed["n"] == 0).all()
    assert len(frame) == 2 * 5  # two rows, five metrics


def test_the_saved_unlearned_model_reproduces_the_runs_metrics(make_cfg, tmp_path, shared_cache):
    """unlearned.pt + unlearned.yaml rebuild the model; on the run's forget set (forget_idx.npy)
    it gives the run's accuracies exactly. metrics.json names it and the cached original and oracle."""
    from runner import saved
    from runner.evaluate import EvalContext, accuracies

    result = _run(make_cfg, tmp_path, shared_cache, "a", "method=ft")
    run = tmp_path / "a"
    assert result["models"]["unlearned"] == str(run / "unlearned.pt")
    assert torch.load(run / "unlearned.pt", weights_only=True)  # a plain state dict
    for role in ("original", "retrain"):
        assert result["models"][role].endswith(f"{result['cache_keys'][role]}/model.pt")
        assert Path(result["models"][role]).exists()
    model = saved.load(run)
    cfg = make_cfg(*FAST, "method=ft", cache_dir=shared_cache)
    ds = load_dataset(cfg)
    forget = np.load(run / "forget_idx.npy")
    split = make_split(cfg.forget, ds.train_y.numpy(), ds.num_classes)
    np.testing.assert_array_equal(split.forget_idx, forget)
    again = accuracies(model, EvalContext(ds.train_x, ds.train_y, ds.test_x, ds.test_y, split,
                                          ds.num_classes, batch_size=128))
    for name in ("forget_acc", "retain_acc", "test_acc", "forget_confidence"):
        assert again[name] == result["metrics"]["unlearned"][name], name
    off = _run(make_cfg, tmp_path, shared_cache, "b", "method=ft", "save_unlearned=false",
               "save_samples=false")
    assert "models" not in off and not (tmp_path / "b" / "unlearned.pt").exists()
    assert "samples" not in off and not (tmp_path / "b" / "samples.npz").exists()


def test_a_forget_set_from_a_file_is_forgotten_in_its_order(make_cfg, tmp_path, shared_cache):
    listed = np.array([1400, 3, 977, 12, 500, 41, 8, 1000, 650, 222], dtype=np.int64)
    (tmp_path / "mine.csv").write_text("index\n" + "\n".join(map(str, listed)) + "\n")
    result = _run(make_cfg, tmp_path, shared_cache, "a", "method=ft", "forget=indices",
                  f"forget.path={tmp_path / 'mine.csv'}")
    assert result["n_forget"] == 10 and result["n_retain"] == 1437 - 10
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "forget_idx.npy"), listed)
    rows = make_table([json.loads((tmp_path / "a" / "metrics.json").read_text())])
    assert rows[1][:3] == ["digits", "indices mine.csv", "original"]


def test_a_given_original_is_used_as_it_is(make_cfg, tmp_path, shared_cache):
    """original.checkpoint: the run's original is that file's model (here the unlearned model of
    another run: its metrics come back as the original's), keyed by the file's bytes."""
    first = _run(make_cfg, tmp_path, shared_cache, "a", "method=ft")
    given = tmp_path / "a" / "unlearned.pt"
    second = _run(make_cfg, tmp_path, shared_cache, "b", "method=rl",
                  f"original.checkpoint={given}")
    assert second["metrics"]["original"] == first["metrics"]["unlearned"]
    digest = hashlib.sha256(given.read_bytes()).hexdigest()
    assert second["cache_keys"]["original"] == f"given-{digest}"
    assert second["models"]["original"] == str(given.resolve())
    assert second["cache_keys"]["retrain"] == first["cache_keys"]["retrain"]  # the same oracle
    assert any(i["kind"] == "given" for i in second["plan"])


def test_a_given_unlearned_model_is_evaluated_as_the_runs(make_cfg, tmp_path, shared_cache):
    """unlearned.checkpoint: the run evaluates that file's model instead of running the method,
    against the same oracle and original; its table row is named after the file."""
    first = _run(make_cfg, tmp_path, shared_cache, "a", "method=rl")
    given = tmp_path / "a" / "unlearned.pt"
    second = _run(make_cfg, tmp_path, shared_cache, "b", f"unlearned.checkpoint={given}")
    assert second["metrics"] == first["metrics"] and second["avg_gap"] == first["avg_gap"]
    assert second["models"]["unlearned"] == str(given.resolve())
    assert not (tmp_path / "b" / "unlearned.pt").exists()
    items = {i["name"]: (i["kind"], i["action"]) for i in second["plan"]}
    assert items[f"unlearned ({given})"] == ("given", "load") and "unlearn" not in items
    digest = hashlib.sha256(given.read_bytes()).hexdigest()
    assert second["cache_keys"]["unlearned"] == f"given-{digest}"
    rows = make_table([json.loads((tmp_path / "b" / "metrics.json").read_text())])
    assert [r[2] for r in rows[1:]] == ["original", "given unlearned.pt"]


def test_each_sweep_has_its_own_wandb_group():
    from omegaconf import OmegaConf

    from runner.__main__ import sweep_group

    def hc(where, experiment):
        return OmegaConf.create({"sweep": {"dir": where},
                                 "runtime": {"choices": {"experiment": experiment}}})

    assert sweep_group(hc("outputs/multirun/2026-12-02/10-00-00", "compare")) == (
        "compare_2026-12-02_10-00-00")
    assert sweep_group(hc("outputs/multirun/2026-12-03/10-00-00", None)) == "2026-12-03_10-00-00"
