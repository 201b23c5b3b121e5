"""Past one process: sweeps through Hydra's launchers sharing one cache, a job killed mid-training
and rerun, a damaged cache file, and a sweep in which one job fails. Every run here is the real
runner in its own process (`python -m runner`), on the bundled digits."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.__main__ import execute
from runner.report import load_results

from conftest import FAST

REPO = Path(__file__).resolve().parent.parent
QUICK = ["logger=none", "device=cpu", "train.epochs=3", "method.epochs=2"]
METHODS = "method=ft,rl,ga,l1_sparse"


def _env(tmp_path):
    env = dict(os.environ, WANDB_SILENT="true", WANDB_DIR=str(tmp_path / "wandb"),
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("WANDB_API_KEY", None)
    return env


def _sweep(tmp_path, *overrides):
    """A multirun into tmp_path/sweep with the cache in tmp_path/cache; its results."""
    cmd = [sys.executable, "-m", "runner", "-m", *overrides,
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp_path),
                          timeout=600)
    return proc, load_results(tmp_path / "sweep")


def _built_once(results, n_jobs):
    assert len(results) == n_jobs and all(r["status"] == "ok" for r in results)
    for kind in ("original", "retrain"):
        assert len({r["cache_keys"][kind] for r in results}) == 1  # all use the same model
        assert sum(not r["cache_hits"][kind] for r in results) == 1  # which one job built


def test_joblib_sweep_of_four_jobs_builds_the_shared_models_once(tmp_path):
    # Four processes at once ask for the same missing original and oracle. logger=wandb: every
    # job gets its own offline W&B run (the joblib + wandb trap of USERS.md).
    proc, results = _sweep(tmp_path, "hydra/launcher=local_processes", "hydra.launcher.n_jobs=4",
                           METHODS, *QUICK, "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _built_once(results, 4)
    assert len(list((tmp_path / "sweep").glob("*/wandb/offline-run-*"))) == 4
    original = tmp_path / "cache" / "original"
    assert [p.name for p in original.iterdir()] == [results[0]["cache_keys"]["original"]]
    # no temp or partial dirs left behind


def test_submitit_local_sweep_of_four_jobs_builds_the_shared_models_once(tmp_path):
    proc, results = _sweep(tmp_path, "hydra/launcher=slurm_local", METHODS, *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _built_once(results, 4)
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))) == 4


def test_ray_sweep_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[ray]'")
    # address null: the launcher starts a Ray instance on this machine and stops it at the end.
    proc, results = _sweep(tmp_path, "hydra/launcher=ray_cluster",
                           "+hydra.launcher.ray.init.num_cpus=2", "method=ft,rl", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _built_once(results, 2)
    assert "Started a local Ray instance" in proc.stderr


def test_a_failing_job_leaves_the_others_and_is_marked_in_the_table(tmp_path):
    # requests=5000 cannot be met by 144 forget samples: that job fails after loading its data.
    proc, results = _sweep(tmp_path, "method=ft,rl", "requests=1,5000", *QUICK)
    assert proc.returncode != 0  # the sweep says something failed ...
    assert sorted(r["status"] for r in results) == ["failed", "failed", "ok", "ok"]
    # ... and a job that never started (a cancelled array task) is listed too.
    never = next((tmp_path / "sweep").glob("*method=rl,requests=1*"))
    subprocess.run(["rm", "-r", str(never)], check=True)
    report = subprocess.run([sys.executable, "-m", "runner.report", str(tmp_path / "sweep")],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in report.splitlines() if line.startswith("| digits")}
    assert rows["ft requests=5000"] == ["failed"] * 5 + ["0/1 (1 failed)"]
    assert rows["ft requests=1"][-1] == "1/1" and rows["ft requests=1"][0] != "failed"
    assert "failed: " in report and "requests=5000: the forget set has 144 samples" in report
    assert "never started: " in report and "method=rl" in report.split("never started: ")[1]


# -- a job killed in the middle, then preempted, then finished ---------------------------------

RUN = ["method=ft", *FAST, "method.epochs=2"]


def _runner(tmp_path, cache, run_dir, *extra):
    return [sys.executable, "-m", "runner", *RUN, f"paths.cache_dir={cache}",
            f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """metrics.json of RUN never interrupted, with the default checkpoint interval (not reached)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_runner(tmp_path, tmp_path / "cache", tmp_path / "run"), cwd=REPO,
                   env=_env(tmp_path), check=True, capture_output=True, timeout=600)
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


def _same_result(result, reference, why=""):
    assert result["status"] == "ok", why
    assert result["cache_keys"] == reference["cache_keys"], why
    assert result["metrics"] == reference["metrics"], why
    assert result["avg_gap"] == reference["avg_gap"], why


# Steps per epoch at batch 64: 1,437 training digits for the original, 1,293 for the oracle.
STEPS_PER_EPOCH = {"original": 23, "retrain": 21}


def _training_step(cache: Path, kind: str) -> int:
    """Steps done by the training of `kind` in progress, from its checkpoint (0: none yet)."""
    for path in (cache / kind).glob(".partial-*/train.ckpt"):
        try:
            payload = path.read_bytes().partition(b"\n")[2]
            state = torch.load(io.BytesIO(payload), weights_only=True)
        except (OSError, RuntimeError, EOFError):
            continue  # replaced or removed while read
        return state["epoch"] * STEPS_PER_EPOCH[kind] + state["step"]
    return 0


def _stop_during(proc, cache, kind, after_steps, signum):
    """Send `signum` once `kind`'s training has done `after_steps` steps in all."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if _training_step(cache, kind) >= after_steps:
            proc.send_signal(signum)
            proc.wait(120)
            return
        time.sleep(0.01)
    raise AssertionError(f"{kind} training was not seen in progress (rc={proc.poll()})")


def test_a_killed_then_preempted_run_resumes_to_the_uninterrupted_metrics(tmp_path, uninterrupted):
    env = _env(tmp_path)
    rng = random.Random()
    kill_at, term_at = rng.randint(1, 180), rng.randint(1, 120)  # 184 and 168 steps in all
    why = f"(SIGKILL at step {kill_at} of the original, SIGTERM at step {term_at} of the oracle)"
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cmd = _runner(tmp_path, cache, run_dir, "checkpoint.every_s=0")
    log = open(tmp_path / "log.txt", "w")
    # 1. SIGKILL while the original trains: nothing can run, the checkpoint is what is left.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    _stop_during(proc, cache, "original", kill_at, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, why
    assert list((cache / "original").glob(".partial-*/train.ckpt")), why
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    # The report puts the killed run in its cell: its config was written before any work.
    report = subprocess.run([sys.executable, "-m", "runner.report", str(run_dir), "--out",
                             str(tmp_path / "table")], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    assert "| digits | 10% | ft | unfinished |" in report and "0/1 (1 unfinished)" in report
    # 2. Rerun; SIGTERM while the oracle trains: it saves, stops, and says so.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    _stop_during(proc, cache, "retrain", term_at, signal.SIGTERM)
    assert proc.returncode == 1, why
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["status"] == "preempted" and "SIGTERM" in saved["error"], why
    # 3. Rerun to the end: the same metrics as the run that was never interrupted.
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=log, stderr=subprocess.STDOUT,
                   timeout=600)
    log.close()
    _same_result(json.loads((run_dir / "metrics.json").read_text()), uninterrupted, why)
    text = (tmp_path / "log.txt").read_text()
    assert text.count("resuming from epoch") == 2, why  # the original once, the oracle once
    assert not list(cache.glob("*/.partial-*")), why


def test_slurm_preemption_signal_checkpoints_requeues_and_resumes(tmp_path, uninterrupted):
    """submitit's preemption signal (USR2) in the middle of training: the step finishes, the
    checkpoint is written, submitit's handler requeues the job (its local executor restarts it)
    and the restarted job resumes, ending with the uninterrupted run's metrics."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "runner", "-m", "hydra/launcher=slurm_local", *RUN,
           "checkpoint.every_s=0", f"paths.cache_dir={cache}",
           f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    at = random.randint(1, 150)
    deadline = time.monotonic() + 300
    while _training_step(cache, "original") < at:  # the original is training, step `at` done
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    job = subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True,
                         text=True).stdout.split()
    assert len(job) == 1, job
    os.kill(int(job[0]), signal.SIGUSR2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    text = _read(tmp_path / "sweep" / ".submitit")
    assert "SIGUSR2 received; checkpoint saved" in text and "Requeued job" in text, text[-3000:]
    assert "resuming from epoch" in text, text[-3000:]
    [result] = load_results(tmp_path / "sweep")
    hits = result["cache_hits"]
    assert (hits["original"], hits["retrain"]) == (False, False)  # resumed, not loaded
    _same_result(result, uninterrupted)


def _read(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*/*_log.*")))


def test_a_cached_model_with_a_flipped_byte_is_rebuilt_the_same(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "method=ft")
    first = execute(cfg, tmp_path / "a")
    weights = Path(cfg.paths.cache_dir) / "original" / first["cache_keys"]["original"] / "model.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    weights.write_bytes(bytes(blob))
    # the unlearning and the evaluations run again, on the rebuilt original
    second = execute(make_cfg(*FAST, "method=ft", "cache.unlearned=false",
                              "cache.evaluations=false"), tmp_path / "b")
    assert second["cache_hits"] == {"original": False, "retrain": True}  # detected and rebuilt
    assert second["metrics"] == first["metrics"]
