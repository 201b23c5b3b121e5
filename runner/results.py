"""Where a run's results go: `metrics.json` in the run dir (written atomically, also for a failed
run) and one W&B run per job, always finished so multirun jobs never bleed into each other."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


def _flat(result: dict) -> dict:
    """role/metric -> value, and avg_gap, of one evaluation."""
    flat = {f"{role}/{k}": v for role in ROLES for k, v in result["metrics"].get(role, {}).items()}
    flat["avg_gap"] = result["avg_gap"]
    return flat


class Logger:
    """W&B when `logger.kind=wandb`, nothing otherwise (metrics.json is always written)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, name: str, group: str | None):
        self.run = None
        if cfg.logger.kind != "wandb":
            return
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
            dir=str(run_dir), name=name, group=cfg.logger.group or group,
            tags=list(cfg.logger.tags), config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))

    def log_result(self, result: dict) -> None:
        if self.run is None:
            return
        if result.get("stage") == "reference":
            ref = result["reference"]
            self.run.summary.update({f"reference/{k}": ref[k] for k in ("trained", "train_seconds")})
            return
        if result.get("stage") == "ensemble":
            e = result["ensemble"]
            flat = {f"ensemble/{k}": v for k, v in e.items() if isinstance(v, (int, float))}
            for k in ("member_acc", "member_robust_acc"):
                flat.update({f"ensemble/{k}/{i}": v for i, v in enumerate(e[k])})
            flat.update({f"ensemble/transfer_rate/{pair}": v
                         for pair, v in e["transfer_rate"].items()})
            self.run.log(flat)
            self.run.summary.update(flat)
            return
        # Sequential runs log each request's metrics as one step (x axis: request).
        for entry in result.get("requests", []):
            self.run.log({**_flat(entry), "request": entry["request"]})
        flat = _flat(result)
        flat.update({f"time/{k}": v for k, v in result["stage_seconds"].items()})
        adv = result.get("adversarial")
        if adv is not None:
            flat.update({f"adversarial/{k}": adv[k]
                         for k in ("model_calls_per_sample", "success_rate", "eps_init")
                         if isinstance(adv[k], (int, float))})
        if "requests" not in result:
            self.run.log(flat)
        self.run.summary.update(flat)
        columns, rows = summary_rows(result)
        charts = {"summary_table": self.wandb.Table(columns=columns, data=rows)}
        if adv is not None:
            table = self.wandb.Table(columns=["eps", "forget samples"],
                                     data=[[k, v] for k, v in adv["eps_histogram"].items()])
            charts["adversarial/eps_histogram"] = self.wandb.plot.bar(
                table, "eps", "forget samples", title="smallest eps per forget sample")
        # Plots the run wrote (RMIA ROC curves, AMUN's eps histogram) as images.
        for png in sorted(Path(result["run_dir"]).glob("*.png")) if "run_dir" in result else []:
            charts[f"plots/{png.stem}"] = self.wandb.Image(str(png))
        self.run.log(charts)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
