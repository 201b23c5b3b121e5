"""Where a study's time goes beyond training: MIA-efficacy, the evaluation of a sweep, a whole study.
Each row times today's path against the old one (or the peers' way) in the same process, the
repeats interleaved, and reports the median, the spread and the ratio of medians:

- mia: MIA-efficacy's SVC fit on 10,000 members + 10,000 non-members, predicting 5,000 forget
  samples (synthetic confidences shaped like a memorizing model's: members Beta(8, 1), non-members
  Beta(4, 1), forget Beta(6, 1)). Old: sklearn's `SVC(kernel="rbf")`. Ours: `attacks.svc1d.SVC1D`.
  Every repeat asserts that both predict the same.
- evaluate: the evaluate-stage seconds summed over the 9 jobs of the AMUN paper's comparison
  (retrain, FT, RL, GA, BS, l1-sparse, SalUn, AMUN, AMUN+SalUn; one seed) on `--dataset`, with
  the models and the unlearned models already in the cache and the evaluations not. Old:
  `cache.evaluations=false` and MIA-efficacy by sklearn's SVC (the code path before issue 20).
- study: that comparison from an empty cache as one multirun command (`python -m runner -m
  method=...`: the jobs share one cache), against the peers' way: each job its own command with
  its own empty cache (each trains its own original and oracle). Wall seconds of the commands.

    python -m benchmarks.study [--repeats 5] [--rows mia,evaluate,study] [--dataset digits]

Writes outputs/bench/study.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.svm import SVC

from attacks.svc1d import SVC1D
from benchmarks.common import OUT_DIR, compose_config, device_name, summary, write
from runner.__main__ import execute
from runner.trained import resolve_device

METHODS = ["retrain", "ft", "rl", "ga", "bs", "l1_sparse", "salun", "amun", "amun_salun"]
REPO = Path(__file__).resolve().parent.parent


def _row(old: list[float], ours: list[float], **extra) -> dict:
    o, n = summary(old), summary(ours)
    return {"unit": "s", "old": o, "ours": n, "ratio": o["median"] / n["median"], **extra}


def mia_row(repeats: int, n: int = 10_000, n_target: int = 5_000) -> dict:
    rng = np.random.default_rng(0)
    x = np.r_[rng.beta(8, 1, n), rng.beta(4, 1, n)]
    y = np.r_[np.ones(n), np.zeros(n)]
    target = rng.beta(6, 1, n_target)
    old, ours = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a = SVC(C=3.0, kernel="rbf", gamma="auto").fit(x[:, None], y).predict(target[:, None])
        old.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = SVC1D(3.0).fit(x, y).predict(target)
        ours.append(time.perf_counter() - start)
        assert np.array_equal(a, b), "the fast SVC predicted differently"
    return _row(old, ours, members=n, nonmembers=n, targets=n_target, identical_predictions=True)


def _sweep_evaluate_seconds(overrides: list[str], work: Path, name: str) -> float:
    total = 0.0
    for method in METHODS:
        result = execute(compose_config([*overrides, f"method={method}"]), work / name / method)
        total += result["stage_seconds"]["evaluate"]
    return total


def evaluate_row(repeats: int, dataset: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="study-evaluate-", dir=OUT_DIR))
    cache = work / "cache"
    base = [f"dataset={dataset}", "logger=none", "figures=false", f"paths.cache_dir={cache}"]
    old_path = [*base, "cache.evaluations=false", "eval.evaluators.mia_efficacy.kernel_gib=0"]
    try:
        _sweep_evaluate_seconds(base, work, "warmup")  # trains and caches every model
        old, ours = [], []
        for k in range(repeats):
            old.append(_sweep_evaluate_seconds(old_path, work, f"old{k}"))
            shutil.rmtree(cache / "evaluation", ignore_errors=True)  # evaluations not yet cached
            ours.append(_sweep_evaluate_seconds(base, work, f"ours{k}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _row(old, ours, dataset=dataset, methods=METHODS, seed=1,
                what="evaluate-stage seconds summed over the sweep's jobs")


def _command(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def study_row(repeats: int, dataset: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="study-", dir=OUT_DIR)).resolve()
    base = [f"dataset={dataset}", "logger=none"]
    old, ours = [], []
    try:
        for k in range(repeats):
            seconds = 0.0
            for method in METHODS:  # the peers' way: a command and an empty cache per job
                seconds += _command([*base, f"method={method}",
                                     f"paths.cache_dir={work / f'peer{k}' / method / 'cache'}",
                                     f"hydra.run.dir={work / f'peer{k}' / method / 'run'}"], REPO)
            old.append(seconds)
            ours.append(_command(["-m", *base, "method=" + ",".join(METHODS),
                                  f"paths.cache_dir={work / f'ours{k}' / 'cache'}",
                                  f"hydra.sweep.dir={work / f'ours{k}' / 'runs'}"], REPO))
            shutil.rmtree(work / f"peer{k}", ignore_errors=True)
            shutil.rmtree(work / f"ours{k}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _row(old, ours, dataset=dataset, methods=METHODS, seed=1,
                what="wall seconds: one multirun command vs one command per job, empty caches")


ROWS = {"mia": lambda a: mia_row(a.repeats), "evaluate": lambda a: evaluate_row(a.repeats, a.dataset),
        "study": lambda a: study_row(a.repeats, a.dataset)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", default="mia,evaluate,study")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--name", default="study")
    args = ap.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    record = {"device": device_name(resolve_device("cpu")), "repeats": args.repeats, "rows": {}}
    for name in args.rows.split(","):
        start = time.perf_counter()
        record["rows"][name] = ROWS[name](args)
        row = record["rows"][name]
        print(f"{name:<9} old {row['old']['median']:8.2f} s [{row['old']['min']:.2f}, "
              f"{row['old']['max']:.2f}]   ours {row['ours']['median']:8.2f} s "
              f"[{row['ours']['min']:.2f}, {row['ours']['max']:.2f}]   ratio {row['ratio']:.2f}x"
              f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    path = write(args.name, record)
    print(f"written: {path}")
    return record


if __name__ == "__main__":
    main()
