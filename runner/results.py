"""Where a run's results go: `metrics.json` in the run dir (written atomically, also for a failed
run) and the logger `logger` selects (`_target_`): one W&B run per job, always finished so
multirun jobs never bleed into each other, or none."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Literal, Optional

log = logging.getLogger("runner")
METRICS_FILE = "metrics.json"
ROLES = ("unlearned", "retrain", "original")


def git_commit() -> str:
    """HEAD of the code's repository, with '-dirty' when the working tree has changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_metrics(run_dir: Path, result: dict) -> Path:
    path = run_dir / METRICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)
    return path


def summary_rows(result: dict) -> tuple[list[str], list[list]]:
    """One row per model role (unlearned, retrain, original), one column per metric."""
    names = sorted({k for role in ROLES for k in result["metrics"].get(role, {})})
    rows = [[role] + [result["metrics"][role].get(n) for n in names]
            for role in ROLES if role in result["metrics"]]
    return ["model"] + names, rows


class NullLogger:
    """`logger=none`: nothing besides metrics.json."""

    def __init__(self, config: dict, run_dir: Path, name: str, sweep: str | None):
        pass

    def log_result(self, result: dict, scalars: dict, steps: list[dict] = ()) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """`logger=wandb`: one W&B run per job, named `name`, grouped by the sweep."""

    def __init__(self, config: dict, run_dir: Path, name: str, sweep: str | None, *,
                 project: str, entity: Optional[str], mode: Literal["offline", "online", "disabled"],
                 group: Optional[str], tags: list):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, mode=mode, dir=str(run_dir), name=name,
            group=group or sweep, tags=list(tags), config=config, reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"))

    def log_result(self, result: dict, scalars: dict, steps: list[dict] = ()) -> None:
        """`scalars` as the run's summary; `steps` (sequential requests: x axis `request`), or
        else the scalars, as its history; the result's tables and plots."""
        if self.run is None:
            return
        for step in steps:
            self.run.log(step)
        if not steps:
            self.run.log(scalars)
        self.run.summary.update(scalars)
        charts = {}
        if "metrics" in result:
            columns, rows = summary_rows(result)
            charts["summary_table"] = self.wandb.Table(columns=columns, data=rows)
        adv = result.get("adversarial")
        if adv is not None:
            table = self.wandb.Table(columns=["eps", "forget samples"],
                                     data=[[k, v] for k, v in adv["eps_histogram"].items()])
            charts["adversarial/eps_histogram"] = self.wandb.plot.bar(
                table, "eps", "forget samples", title="smallest eps per forget sample")
        # Plots the run wrote (RMIA ROC curves, AMUN's eps histogram) as images.
        for png in sorted(Path(result["run_dir"]).glob("*.png")) if "run_dir" in result else []:
            charts[f"plots/{png.stem}"] = self.wandb.Image(str(png))
        if charts:
            self.run.log(charts)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
