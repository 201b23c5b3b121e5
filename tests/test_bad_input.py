"""Bad input is refused before compute with one line that names the key; results are never wrong
or lost silently (a foreign artifact, an unrecorded thread count, a shared run dir, an empty
training, an over-long job dir name, a diverged model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import runner
from runner.__main__ import claimed, main
from runner.cache import HOST, MANIFEST, Cache, key_of, save_model
from runner.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _cli(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str, Path]:
    """`python -m runner OVERRIDES` in this process, as the command line runs it: (exit code,
    stderr, run dir)."""
    run_dir = tmp_path / "run"
    # (--config-path: called from here, Hydra would look for conf/ as a Python module)
    argv = ["runner", "--config-path", str(REPO / "conf"), "logger=none", "device=cpu",
            f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path / 'datasets'}", *overrides]
    if not any(o.startswith("paths.cache_dir=") for o in overrides):
        argv.append(f"paths.cache_dir={tmp_path / 'cache'}")
    old, sys.argv = sys.argv, argv
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err, run_dir


def _stages(run_dir: Path) -> list[str]:
    """The stages the run's own log says were started."""
    log = run_dir / "__main__.log"
    text = log.read_text() if log.exists() else ""
    return [line.split("stage ", 1)[1].split()[0] for line in text.splitlines()
            if "] - stage " in line and line.rstrip().endswith("...")]


A_FILE = "A_FILE"  # stands for a path to a regular file, made per test

# (overrides, a key the one-line error must name). Each is refused before any data is loaded.
CORPUS = [
    (["train.lr=nan"], "train.lr"),
    (["train.lr=inf"], "train.lr"),
    (["method.lr=nan"], "method.lr"),
    (["method.lr=-inf"], "method.lr"),
    (["method=trw", "forget=class", "forget.class_id=1", "method.beta=nan"], "method.beta"),
    (["train.epochs=0"], "train.epochs"),
    (["train.epochs=ten"], "train.epochs"),
    (["train.lr=0"], "train.lr"),
    (["train.momentum=1.5"], "train.momentum"),
    (["train.weight_decay=-1"], "train.weight_decay"),
    (["train.precision=fp8"], "train.precision"),
    (["train.schedule.name=linear"], "train.schedule.name"),
    (["+train.foo=1"], "train.foo"),
    (["method.lr=abc"], "method.lr"),
    (["method.epochs=2.5"], "method.epochs"),
    (["method.decay_every=0"], "method.decay_every"),
    (["method.batch_size=0"], "method.batch_size"),
    (["method=ft", "method.use_retain=false"], "use_retain"),
    (["method=amun", "method.attack.eps_init=-1"], "method.attack.eps_init"),
    (["method=amun", "method.attack.kind=cw"], "method.attack.kind"),
    (["method=bs", "method.labels=copy"], "method.labels"),
    (["paths.cache_dir="], "paths.cache_dir"),
    (["paths.cache_dir=null"], "paths.cache_dir"),
    ([f"paths.cache_dir={A_FILE}"], "paths.cache_dir"),
    ([f"paths.data_dir={A_FILE}/sub"], "paths.data_dir"),
    (["save_unlearned=maybe"], "save_unlearned"),
    (["save_samples=1"], "save_samples"),
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["seed=-1"], "seed"),
    (["forget.seed=-1"], "forget.seed"),
    (["forget.fraction=1.5"], "forget.fraction"),
    (["forget.fraction=null"], "forget.fraction"),
    (["forget=class", "forget.class_id=42"], "class_id"),
    (["dataset.augment.crop_pad=-1"], "dataset.augment.crop_pad"),
    (["dataset.augment.pad_mode=mirror"], "pad_mode"),
    (["dataset.mean=[0.1,0.2]"], "dataset.mean"),
    (["dataset.subset.train=7"], "dataset.subset.train"),
    (["dataset.subset.seed=-2"], "dataset.subset.seed"),
    (["device=cuda:abc"], "device"),
    (["device=gpu"], "device"),
    (["+sed=3"], "sed"),
    (["cpu_threads=0"], "cpu_threads"),
    (["cpu_threads=two"], "cpu_threads"),
    (["stage=foo"], "stage"),
    (["requests=0"], "requests"),
    (["reference.num_models=3"], "reference.num_models"),
    (["checkpoint.every_s=-5"], "checkpoint.every_s"),
    (["eval_batch_size=0"], "eval_batch_size"),
    (["eval.evaluators.mia_efficacy.num_members=-3"], "num_members"),
    (["eval.gap_metrics=[test_forget_acc]"], "eval.gap_metrics"),
    (["logger=wandb", "logger.mode=ofline"], "logger.mode"),
    (["model.width=0"], "width"),
]


@pytest.mark.parametrize("overrides,key", CORPUS, ids=[" ".join(o) for o, _ in CORPUS])
def test_bad_input_is_one_line_naming_the_key_before_any_data(tmp_path, capsys, overrides, key):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    overrides = [o.replace(A_FILE, str(a_file)) for o in overrides]
    code, err, run_dir = _cli(tmp_path, capsys, *overrides)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert _stages(run_dir) == []  # the run's log started no stage: nothing loaded or trained
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert not (tmp_path / "cache").exists()


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 40


def test_a_typo_hydra_catches_names_the_key_without_a_traceback(tmp_path, capsys):
    for overrides, key in ((["method.lrr=0.1"], "method.lrr"), (["method=amunn"], "amunn")):
        code, err, run_dir = _cli(tmp_path, capsys, *overrides)
        assert code != 0 and key in err and "Traceback" not in err
        assert not run_dir.exists()  # refused while composing: no run dir at all


def test_a_missing_dataset_is_one_line_before_any_training(tmp_path, capsys):
    code, err, run_dir = _cli(tmp_path, capsys, "dataset=cifar10_jpeg",
                              f"dataset.root={tmp_path}/no-such.tar.gz")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "no-such.tar.gz not found" in lines[0], err
    assert _stages(run_dir) == ["data"]  # failed while loading: no model was trained


def test_a_sweep_with_a_bad_value_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "seed=1,2", "train.lr=nan", "logger=none",
         f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error: train.lr must be a finite number, got nan") == 2  # each job


# -- the five ways a result was wrong or lost -------------------------------------------------

def _artifact(cache: Cache, spec: dict, value: float) -> Path:
    def write(directory):
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, value)
        save_model(directory, model)
    return cache.get_or_build("original", spec, write)[0]


def test_an_artifact_copied_under_another_key_is_corrupt(tmp_path, caplog):
    """The oracle's model.pt and manifest copied into the original's dir: not a hit."""
    cache = Cache(tmp_path)
    original = _artifact(cache, {"role": "original"}, 1.0)
    oracle = _artifact(cache, {"role": "retrain"}, 2.0)
    for name in ("model.pt", MANIFEST):
        shutil.copy(oracle / name, original / name)
    assert cache.load("original", original.name) is None
    assert "describes key" in caplog.text and not original.exists()
    rebuilt = _artifact(cache, {"role": "original"}, 1.0)
    assert torch.load(rebuilt / "model.pt", weights_only=True)["weight"].eq(1.0).all()


@pytest.mark.parametrize("manifest", ["{}", "[]", '{"files": {}}', '{"files": [1]}', "7",
                                      '{"spec": {"role": "original"}, "files": {"model.pt": 3}}'])
def test_a_manifest_of_the_wrong_shape_is_corrupt_and_rebuilt(tmp_path, manifest):
    cache = Cache(tmp_path)
    path = _artifact(cache, {"role": "original"}, 1.0)
    (path / MANIFEST).write_text(manifest)
    assert cache.load("original", path.name) is None  # no crash, and the next build works
    assert _artifact(cache, {"role": "original"}, 1.0) == path and cache.load("original", path.name)


def test_a_killed_builds_temp_dir_is_removed_and_a_live_ones_kept(tmp_path):
    cache = Cache(tmp_path)
    key = key_of({"role": "other"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = {who: tmp_path / "original" / f".tmp-{key}-{host}-{pid}-abcd1234"
            for who, host, pid in (("dead", HOST, dead.pid), ("live", HOST, os.getpid()),
                                   ("elsewhere", "another-node", dead.pid))}
    for path in left.values():
        path.mkdir(parents=True)
    _artifact(cache, {"role": "original"}, 1.0)
    assert not left["dead"].exists() and left["live"].exists() and left["elsewhere"].exists()


def test_the_thread_count_is_set_recorded_and_part_of_the_model_key(make_cfg, monkeypatch):
    """A joblib worker (OMP_NUM_THREADS=1) and a plain run train with the same count; another
    count is another cache key, never the same key with other bytes."""
    import numpy as np

    from runner.trained import RunState, load_dataset, set_cpu_threads, train_or_load

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert set_cpu_threads(None) == len(os.sched_getaffinity(0))
        cfg = make_cfg("dataset=synthetic", "train.epochs=1")
        ds = load_dataset(cfg)
        cache, keys = Cache(cfg.paths.cache_dir), []
        for threads in (1, 2, 1):
            set_cpu_threads(threads)
            state = RunState()
            train_or_load(cfg, cache, "original", ds, np.arange(len(ds.train_y)),
                          torch.device("cpu"), state)
            keys.append((state.cache_keys["original"], state.cache_hits["original"]))
        assert keys[0][0] != keys[1][0] and keys[2] == (keys[0][0], True)
        spec = json.loads((cache.path("original", keys[1][0]) / MANIFEST).read_text())["spec"]
        assert spec["cpu_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_two_runs_started_together_get_their_own_dirs(make_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    dirs = set()
    for seed in (1, 2):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"seed={seed}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        dirs.add(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert len(dirs) == 2 and all(f"_{os.getpid()}" in d for d in dirs)


def test_a_run_dir_in_use_is_refused_before_anything_is_written(tmp_path):
    with claimed(tmp_path):
        with pytest.raises(ConfigError, match="in use by another run"):
            with claimed(tmp_path):
                pass
    with claimed(tmp_path):  # free again once the first run is over
        pass


def test_long_override_lists_get_bounded_distinct_job_dirs(tmp_path):
    """A dozen keys and a dataset path pass the 255-byte name limit as Hydra names job dirs."""
    long_root = "/usr/share/datasets/" + "a-rather-long-folder-name/" * 6
    assert runner.job_dirname("seed=1") == "seed=1"
    names = {runner.job_dirname(f"dataset.root={long_root},seed={s}," + ",".join(
        f"method.key_{i}=value_{i}" for i in range(12))) for s in (1, 2)}
    assert len(names) == 2 and all(len(n.encode()) <= runner.MAX_DIRNAME and "/" not in n
                                   for n in names)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "experiment=compare", "seed=1,2", "train.lr=nan",
         f"dataset.root={tmp_path}/{'x' * 60}/{'y' * 60}", "forget.fraction=0.1", "method.lr=0.01",
         "method.epochs=2", "method.batch_size=32", "train.epochs=3", "train.batch_size=64",
         "train.momentum=0.8", "train.weight_decay=0.001", "method.use_retain=true",
         "dataset.subset.train=500", "dataset.subset.test=100", "logger=none",
         f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO, capture_output=True, text=True)
    assert "File name too long" not in proc.stderr, proc.stderr
    jobs = [p.parent for p in (tmp_path / "sweep").glob("*/metrics.json")]
    assert len(jobs) == 2  # each job ran (and was refused: lr=nan) in a dir of its own
    assert all(json.loads((j / "metrics.json").read_text())["status"] == "failed" for j in jobs)


def test_a_diverged_model_is_never_cached(make_cfg):
    import numpy as np

    from runner.train import Diverged
    from runner.trained import RunState, load_dataset, train_or_load

    cfg = make_cfg("dataset=synthetic", "train.epochs=2", "train.lr=1e30")
    ds = load_dataset(cfg)
    cache = Cache(cfg.paths.cache_dir)
    with pytest.raises(Diverged, match="original"):
        train_or_load(cfg, cache, "original", ds, np.arange(len(ds.train_y)), torch.device("cpu"),
                      RunState())
    assert not [p for p in (Path(cfg.paths.cache_dir) / "original").iterdir()
                if not p.name.startswith(".")]


def test_a_bad_forget_file_is_one_line_naming_forget_path(tmp_path, capsys):
    """Refused before any data when the file itself is wrong; after loading the data (which says
    how many training samples there are) when an index is out of range; never after training."""
    for content, message, stages in (("5 5", "index 5 is listed 2 times", []),
                                     ("5 99999", "index 99999 is out of range", ["data"])):
        path = tmp_path / "f.txt"
        path.write_text(content)
        code, err, run_dir = _cli(tmp_path, capsys, "dataset=digits", "forget=indices",
                                  f"forget.path={path}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "forget.path" in lines[0], err
        assert message in lines[0] and _stages(run_dir) == stages
    code, err, _ = _cli(tmp_path, capsys, "dataset=digits", "forget=indices")
    assert code == 2 and "forget=indices needs forget.path=FILE" in err


def test_a_bad_given_model_is_one_line_before_any_data(tmp_path, capsys, make_cfg):
    from models.build import build_model

    fits = build_model(make_cfg("dataset=digits").model, make_cfg("dataset=digits").dataset)
    state = fits.state_dict()
    name = next(k for k, v in state.items() if v.dim() > 1)
    wrong_shape = {**state, name: torch.zeros(3, 3)}
    cases = {"missing.pt": (None, "no such file"),
             "junk.pt": (b"not a torch file", "not a loadable state dict"),
             "other.pt": (torch.nn.Linear(2, 2).state_dict(), "does not fit the configured model"),
             "shape.pt": (wrong_shape, f"{name} is (3, 3) there and")}
    for file, (content, message) in cases.items():
        path = tmp_path / file
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        for key in ("original.checkpoint", "unlearned.checkpoint"):
            code, err, run_dir = _cli(tmp_path, capsys, "dataset=digits", f"{key}={path}")
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and key in lines[0], err
            assert message in lines[0], err
            assert _stages(run_dir) == []
    torch.save(state, tmp_path / "fits.pt")
    code, err, _ = _cli(tmp_path, capsys, "dataset=digits", "requests=2",
                        f"unlearned.checkpoint={tmp_path / 'fits.pt'}")
    assert code == 2 and "unlearned.checkpoint with requests=2" in err
