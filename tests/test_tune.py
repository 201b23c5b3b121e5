"""experiment=tune and runner.tune: a real lr x decay sweep on digits, and the pick it writes into
conf/method_dataset/ (a copy of the config tree), which the runner then composes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from runner.report import load_results
from runner.tune import best, grids, main

from conftest import CONF_DIR, FAST

REPO = Path(__file__).resolve().parent.parent


def test_best_is_the_lowest_mean_gap_over_seeds():
    grid = {(0.1, 1): [1.0, 5.0], (0.01, 1): [2.0, 2.5], (0.01, 5): [0.5, 9.0]}
    assert best(grid) == (0.01, 1)  # mean 2.25 beats 3.0 and 4.75


def test_tune_sweeps_the_grid_and_writes_a_pick_the_runner_composes(tmp_path):
    sweep, conf = tmp_path / "sweep", tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "method_dataset" / "ga_digits.yaml").write_text(
        "# @package method\nlr: 0.5\n# why 0.8\nmomentum: 0.8\n")  # a key the pick must keep
    cmd = [sys.executable, "-m", "runner", "-m", "experiment=tune", "dataset=digits", *FAST,
           "method=ft,ga", "method.lr=0.05,0.01", "method.decay_every=2", "method.epochs=2",
           "seed=2", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(sweep)
    # The command line's grid replaces the experiment's 7 x 3: 2 methods x 2 lr x 1 decay.
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    assert all(r["seed"] == 2 and r["config"]["forget"]["seed"] == 2 for r in results)
    found = grids(sweep)
    assert set(found) == {("digits", "ft", True), ("digits", "ga", True)}
    assert all(not search.problems() for search in found.values())
    ft = found[("digits", "ft", True)].means()
    assert sorted(ft) == [(0.01, 2), (0.05, 2)]
    pick = min(ft, key=lambda p: np.mean(ft[p]))

    out = subprocess.run([sys.executable, "-m", "runner.tune", str(sweep), "--write", "--conf",
                          str(conf)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"best lr={pick[0]:g} decay_every={pick[1]}" in out.stdout
    written = (conf / "method_dataset" / "ft_digits.yaml").read_text()
    assert "experiment=tune" in written and "seeds [2]" in written  # how it was made
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["method=ft", "dataset=digits"])
        ga = compose("config", overrides=["method=ga", "dataset=digits"])
    assert (cfg.method.lr, cfg.method.decay_every) == pick
    ga_pick = best(found[("digits", "ga", True)].means())
    assert (ga.method.lr, ga.method.decay_every, ga.method.momentum) == (*ga_pick, 0.8)
    assert "# why 0.8" in (conf / "method_dataset" / "ga_digits.yaml").read_text()


def _job(root, name, *, lr, seed, epochs=10, commit="abc", status="ok", gap=1.0, method="ft"):
    """A job dir of a tune sweep, as the runner leaves it (metrics.json, .hydra/hydra.yaml)."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      dataset: digits\n")
    config = {"seed": seed, "forget": {"kind": "random", "fraction": 0.1, "seed": seed},
              "method": {"name": method, "use_retain": True, "lr": lr, "decay_every": 5,
                         "epochs": epochs}}
    (job / "metrics.json").write_text(json.dumps(
        {"status": status, "seed": seed, "method": method, "use_retain": True, "avg_gap": gap,
         "git_commit": commit, "config": config}))


def test_tune_refuses_to_write_a_pick_from_runs_that_are_not_alike(tmp_path, capsys):
    conf = tmp_path / "conf"
    (conf / "method_dataset").mkdir(parents=True)
    cases = {
        "epochs": [dict(lr=0.1, seed=1), dict(lr=0.01, seed=1, epochs=5)],
        "commits": [dict(lr=0.1, seed=1), dict(lr=0.01, seed=1, commit="def")],
        "seeds": [dict(lr=0.1, seed=1), dict(lr=0.1, seed=2), dict(lr=0.01, seed=1)],
        "failed": [dict(lr=0.1, seed=1), dict(lr=0.01, seed=1, status="failed")],
        "grid": [dict(lr=0.1, seed=1), dict(lr=0.01, seed=1), dict(lr=0.1, seed=1, method="ga")],
    }
    expected = {"epochs": "differ in more than lr and decay_every: ['method.epochs']",
                "commits": "several commits: ['abc', 'def']",
                "seeds": "different seeds", "failed": "a run without a result: failed",
                "grid": "ga on digits (with D_R, 1 seed(s) per point): best lr=0.1"}
    for case, jobs in cases.items():
        root = tmp_path / case
        for i, job in enumerate(jobs):
            _job(root, f"job{i}", **job)
        assert main([str(root), "--write", "--conf", str(conf)]) == 1
        out = capsys.readouterr().out
        assert "not written:" in out and expected[case] in out, out
        if case == "grid":  # ft ran the whole grid and is written; ga lacks lr 0.01
            assert "lacks points other methods of the sweep ran: [(0.01, 5)]" in out
            assert not (conf / "method_dataset" / "ga_digits.yaml").exists()
            (conf / "method_dataset" / "ft_digits.yaml").unlink()
        assert not (conf / "method_dataset" / "ft_digits.yaml").exists()
    # Alike runs are written: lowest mean gap over the same seeds.
    root = tmp_path / "alike"
    for i, (lr, seed, gap) in enumerate([(0.1, 1, 2.0), (0.1, 2, 2.0), (0.01, 1, 1.0),
                                         (0.01, 2, 2.5)]):
        _job(root, f"job{i}", lr=lr, seed=seed, gap=gap)
    assert main([str(root), "--write", "--conf", str(conf)]) == 0
    written = (conf / "method_dataset" / "ft_digits.yaml").read_text()
    assert "lr: 0.01\ndecay_every: 5\n" in written and "seeds [1, 2]" in written
