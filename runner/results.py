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

    def __init__(self, config: dict, run_dir: Path, name: str, sweep: str | None, job_type: str):
        pass

    def log_result(self, result: dict, scalars: dict, steps: list[dict] = (),
                   curves: dict | None = None) -> None:
        pass

    def finish(self, status: str = "ok", error: str | None = None) -> None:
        pass


class WandbLogger:
    """`logger=wandb`: one W&B run per job, named `name` (the job's overrides), of `job_type` (the
    method, or the stage), in the group of its sweep (unique per sweep); `log_models`: the run's
    models as W&B artifacts."""

    def __init__(self, config: dict, run_dir: Path, name: str, sweep: str | None, job_type: str,
                 *, project: str, entity: Optional[str],
                 mode: Literal["offline", "online", "disabled"], group: Optional[str],
                 tags: list, log_models: bool = False):
        import wandb

        self.wandb, self.log_models = wandb, log_models
        self.run = wandb.init(
            project=project, entity=entity, mode=mode, dir=str(run_dir), name=name,
            group=group or sweep, job_type=job_type, tags=list(tags), config=config,
            reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))

    def log_result(self, result: dict, scalars: dict, steps: list[dict] = (),
                   curves: dict | None = None) -> None:
        """`scalars` as the run's summary; `steps` (sequential requests: x axis `request`), or
        else the scalars, as its history; the result's tables and plots; each training curve
        (runner.curves: model -> [(epoch, loss, accuracy)]) as loss and accuracy charts."""
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
        for model, points in (curves or {}).items():
            table = self.wandb.Table(columns=["epoch", "loss", "accuracy"],
                                     data=[list(p) for p in points])
            for y in ("loss", "accuracy"):
                charts[f"curves/{model}/{y}"] = self.wandb.plot.line(
                    table, "epoch", y, title=f"{model}: training {y} per epoch")
        # Plots the run wrote (roc.png, confidence.png, AMUN's eps histogram) as images.
        for png in sorted(Path(result["run_dir"]).glob("*.png")) if "run_dir" in result else []:
            charts[f"plots/{png.stem}"] = self.wandb.Image(str(png))
        if charts:
            self.run.log(charts)
        if self.log_models and result.get("models"):
            self._log_models(result)

    def _log_models(self, result: dict) -> None:
        """The unlearned model (with unlearned.yaml, which rebuilds it) as an artifact of this run;
        the original and the oracle as artifacts named by their cache keys, so the runs of a
        sweep that share them share one artifact."""
        keys = result.get("cache_keys", {})
        for role, path in result["models"].items():
            path = Path(path)
            name = (f"unlearned-{self.run.id}" if role == "unlearned"
                    else f"{role}-{str(keys.get(role, 'given'))[:24]}")
            artifact = self.wandb.Artifact(name, type="model", metadata={
                "role": role, "cache_key": keys.get(role), "method": result.get("method"),
                "dataset": result.get("dataset"), "seed": result.get("seed")})
            artifact.add_file(str(path))
            spec = path.with_name("unlearned.yaml")
            if role == "unlearned" and spec.exists():
                artifact.add_file(str(spec))
            self.run.log_artifact(artifact)

    def finish(self, status: str = "ok", error: str | None = None) -> None:
        """Record the run's status (and error) in its summary and finish it (exit code 1 unless
        ok), so the next job of a sweep starts a fresh run."""
        if self.run is not None:
            self.run.summary["status"] = status
            if error is not None:
                self.run.summary["error"] = error
            self.run.finish(exit_code=0 if status == "ok" else 1)
            self.run = None
