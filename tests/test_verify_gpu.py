"""`make verify-gpu` (benchmarks/verify_gpu.py): the stages fit a budget or are skipped, a process
past its deadline is stopped, every stage's result is on disk as soon as it ends, and (slow) the
whole check runs at toy size on a CPU."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from benchmarks import verify_gpu as vg

REPO = Path(__file__).resolve().parent.parent
JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _ctx(tmp_path, budget_s: float, data: str = "synthetic") -> vg.Context:
    ctx = vg.Context(device="cpu", tiny=True, data=data, work=tmp_path / "work",
                     out=tmp_path / "out", deadline=time.monotonic() + budget_s, progress_s=1.0,
                     wheels=tmp_path / "no-wheels")
    ctx.record = {"device": "cpu", "started": "now", "budget_s": budget_s, "tiny": True,
                  "command": "test", "stages": {}}
    return ctx


def test_a_stage_that_does_not_fit_is_skipped_and_each_result_is_written(tmp_path):
    ctx = _ctx(tmp_path, budget_s=60)
    vg.plan(ctx, ["data", "fast"], {"data": 1, "fast": 10_000})
    saved = json.loads((ctx.out / "verify.json").read_text())
    data = saved["stages"]["data"]
    assert (data["status"], data["skipped"]) == ("done", "synthetic data: nothing to decode")
    fast = saved["stages"]["fast"]
    assert fast["status"] == "skipped" and fast["reason"].startswith("needs about 10000 s")
    md = (ctx.out / "verify.md").read_text()
    assert "| fast | skipped: needs about 10000 s" in md


def test_a_process_past_its_deadline_is_stopped_and_a_failure_is_reported(tmp_path):
    ctx = _ctx(tmp_path, budget_s=60)
    start = time.monotonic()
    res = vg.run_process([sys.executable, "-c", "import time; time.sleep(120)"], ctx,
                         deadline=time.monotonic() + 1.0, label="a sleeper")
    assert res["stopped_at_limit"] and time.monotonic() - start < 20
    assert res["returncode"] != 0
    # A stage whose process fails is "failed", and reports no earlier run's benchmark figures.
    ctx.data = str(tmp_path / "missing.tar.gz")
    stale = ctx.work / "bench" / "verify_fast.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"train_seconds": {"runs": [1.0]}, "test_accuracy": {"runs": [94.0]}}')
    vg.plan(ctx, ["data", "fast"], {"data": 1, "fast": 1})
    assert ctx.record["stages"]["data"]["status"] == "failed"
    assert ctx.record["stages"]["fast"]["status"] == "failed"
    assert ctx.record["stages"]["fast"]["benchmark"] is None and not stale.exists()


def test_an_interrupted_driver_stops_its_stage_process(tmp_path):
    ctx = _ctx(tmp_path, budget_s=60)
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"

    def interrupt() -> str:  # what a SIGTERM to the driver does mid-stage (see main)
        raise KeyboardInterrupt("signal 15")

    ctx.progress_s = 1.0
    with pytest.raises(KeyboardInterrupt):
        vg.run_process([sys.executable, "-c", code], ctx, deadline=time.monotonic() + 60,
                       label="a sleeper", progress=interrupt)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # gone, not left running in its own session
        os.kill(pid, 0)


def test_the_comparison_starts_on_its_minimum_and_amun_runs_right_after_retrain():
    order = [m for group in vg.comparison_groups(False) for m in
             group[0].removeprefix("method=").split(",")]
    assert order[:3] == ["retrain", "amun", "amun_salun"]
    assert vg.MINIMUM_S["comparison"][0] < vg.ESTIMATE_S["comparison"][0]


def test_the_comparison_runs_every_method_of_table1_at_both_sizes():
    for tiny in (False, True):
        methods = [m for group in vg.comparison_groups(tiny) for m in
                   group[0].removeprefix("method=").split(",")]
        assert sorted(methods) == sorted(vg.METHODS) == sorted(vg.PAPER_TABLE1)


@pytest.mark.slow
@pytest.mark.skipif(not JPEG.is_file(), reason="needs shared/data's CIFAR-10 JPEG set")
def test_the_whole_check_runs_at_toy_size_on_a_cpu(tmp_path):
    record = vg.main(["--device", "cpu", "--tiny", "--data", str(JPEG), "--work",
                      str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                      "--budget-s", "1800"])
    stages = record["stages"]
    assert {n: s["status"] for n, s in stages.items()} == dict.fromkeys(vg.STAGES, "done")
    assert stages["comparison"]["jobs_done"] == len(vg.METHODS)
    assert {r["method"] for r in stages["comparison"]["against_paper"]} == set(vg.METHODS)
    assert "skipped" in stages["control"]["benchmark"]  # airbench trains on CUDA only
    md = (tmp_path / "out" / "verify.md").read_text()
    assert "Against the paper's Table 1" in md and "The regime" in md
