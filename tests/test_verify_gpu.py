"""`make verify-gpu` (benchmarks/verify_gpu.py): the stages fit a budget or are skipped, a process
past its deadline is stopped, every stage's result is on disk as soon as it ends, and (slow) the
whole check runs at toy size on a CPU."""

from __future__ import annotations

import json
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
                         deadline=time.monotonic() + 1.0)
    assert res["stopped_at_limit"] and time.monotonic() - start < 20
    assert res["returncode"] != 0
    # A stage whose process fails is "failed", and the stages after it still run.
    ctx.data = str(tmp_path / "missing.tar.gz")
    vg.plan(ctx, ["data"], {"data": 1})
    assert ctx.record["stages"]["data"]["status"] == "failed"


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
