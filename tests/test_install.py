"""A non-editable install (`pip install .`) runs on its own: the config tree ships as package data,
and the `unlearn-runner` console script and `python -m runner` both compose and run a digits job
from a directory outside the repository.

The install goes into a temporary target with `--no-deps`: the dependencies are this venv's (a
fresh venv would download torch), the package under test is the installed copy, not the checkout
(PYTHONPATH puts the target first, and the assertions check that it is the one imported)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_non_editable_install_runs_a_digits_job(tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(target), str(REPO)], check=True, capture_output=True)
    assert (target / "conf" / "config.yaml").exists() and (target / "bin" / "unlearn-runner").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import runner, conf; print(runner.__file__); "
                            "print(conf.__file__)"], cwd=cwd, env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(target)) for path in where), where
    composed = subprocess.run([sys.executable, "-m", "runner", "--cfg", "job", "dataset=digits"],
                              cwd=cwd, env=env, capture_output=True, text=True)
    assert composed.returncode == 0 and "name: digits" in composed.stdout, composed.stderr[-2000:]
    run = subprocess.run([sys.executable, str(target / "bin" / "unlearn-runner"), "dataset=digits",
                          "method=ft", "method.epochs=1", "train.epochs=1", "logger=none",
                          "device=cpu", "hydra.run.dir=run", "paths.cache_dir=cache"],
                         cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((cwd / "run" / "metrics.json").read_text())
    assert result["status"] == "ok" and result["metrics"]["unlearned"]["test_acc"] > 0
    assert (cwd / "run" / "unlearned.pt").exists() and (cwd / "cache" / "original").is_dir()
