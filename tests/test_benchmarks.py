"""The benchmarks run end to end on tiny settings and write what `make bench` reports."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, experiment, fast, throughput


@pytest.fixture(autouse=True)
def _bench_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "OUT_DIR", tmp_path / "bench")
    monkeypatch.setattr(experiment, "OUT_DIR", tmp_path / "bench")
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))


def test_throughput_writes_both_pipelines_and_pgd_saves_calls(tmp_path):
    # NCHW for both: the same iterates, so the call counts compare exactly.
    record = throughput.main(["--models", "small_cnn", "--pgd-models", "small_cnn",
                              "--no-channels-last", "--repeats", "1", "--steps", "1", "--batch-size", "16",
                              "--workers", "0", "--infer-images", "40", "--pgd-images", "8",
                              "--pgd-epochs", "1", "--name", "t"])
    saved = json.loads((tmp_path / "bench" / "t.json").read_text())
    assert saved["train"]["small_cnn"]["ratio"] == record["train"]["small_cnn"]["ratio"] > 0
    assert saved["infer"]["small_cnn"]["items"] == 40
    assert saved["ours"]["precision"] == throughput.native_precision(common.torch.device("cpu"))
    calls = saved["pgd"]["small_cnn"]["model_calls_per_sample"]
    # Both follow the same iterates; ours stops each sample at its first flip, so never costs more.
    assert 0 < calls["ours"] <= calls["plain"]


def test_fast_and_experiment_report_every_stage(tmp_path):
    rec = fast.main(["--repeats", "1", "--name", "f", "dataset=synthetic", "model=airbench",
                     "model.widths=[8,16,16]", "train.epochs=1", "train.batch_size=64",
                     "device=cpu"])
    assert rec["n_train"] == 512 and 0 <= rec["test_accuracy"]["median"] <= 100
    rec = experiment.main(["--name", "e", "train.epochs=1", "reference.num_models=2",
                           "method.epochs=1", "device=cpu"])
    assert set(rec["stage_seconds"]) >= {"data", "reference_models", "original", "adversarial",
                                         "retrain", "unlearn", "evaluate"}
    assert "rmia_ft_auc" in rec["metrics"]["unlearned"]
    assert not list((tmp_path / "bench").glob("experiment-*"))  # its cache is deleted
