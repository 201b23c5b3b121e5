"""`python -m runner [overrides]`: one unlearning experiment (or a sweep with -m)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from data.readers import DatasetError
from data.splits import SplitError
from runner.checkpoint import is_preemption
from runner.config import ConfigError, validate
from runner.curves import recording
from runner.results import git_commit, write_metrics
from runner.stages import STAGES, flat_metrics, stage_of
from runner.train import Diverged
from runner.trained import set_cpu_threads
from runner.typed import partial_of

log = logging.getLogger("runner")

# What a user can fix (a config value, a missing dataset file): one line, not a traceback.
USER_ERRORS = (ConfigError, SplitError, DatasetError, Diverged)


@contextmanager
def claimed(run_dir: Path):
    """Hold `run_dir` for this run alone (flock on its `.lock`): a second run that is given the
    same dir while this one runs stops before writing anything there, instead of overwriting its
    metrics.json. On a filesystem without locks the guard is off."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"run dir {run_dir} is in use by another run; give each run its "
                              "own hydra.run.dir (or hydra.sweep.dir)") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def execute(cfg: DictConfig, run_dir: Path, group: str | None = None,
            label: str | None = None) -> dict:
    """Validate, run every stage, and record the outcome (metrics.json, W&B), failed or not;
    `group`: the sweep's W&B group, `label`: the job's overrides (its W&B name)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with claimed(run_dir):
        return _execute(cfg, run_dir, group, label)


def _execute(cfg: DictConfig, run_dir: Path, group: str | None, label: str | None) -> dict:
    stage = STAGES.get(cfg.get("stage"), STAGES["unlearn"])  # validate refuses an unknown stage
    what = _try(lambda: stage.what(cfg))
    name = f"{what}-{cfg.dataset.get('name', '?')}-seed{cfg.get('seed')}"
    base = {"git_commit": git_commit(), "run_dir": str(run_dir), "name": name,
            "config": _config_record(cfg)}
    # Replaces any earlier result in this dir at once: a run that fails or is killed from here on
    # leaves "failed" or "running", never a stale "ok" that a report would count; the config lets
    # the report put even a run killed outright into its table cell.
    write_metrics(run_dir, {**base, "status": "running"})
    logger, start = None, time.perf_counter()
    log.info("run %s: %s", name, run_dir)
    with recording() as curves:
        try:
            validate(cfg)  # before any data is loaded or any model trained
            base["config"] = OmegaConf.to_container(cfg, resolve=True)  # typed by validate
            base["cpu_threads"] = set_cpu_threads(cfg.cpu_threads)
            logger = partial_of(cfg.logger, "logger", 5)(base["config"], run_dir, label or name,
                                                         group, what)
            result = stage_of(cfg.stage).run(cfg, run_dir)
        except BaseException as err:
            # preempted: stopped by a signal with its training state saved (by us, then maybe by
            # submitit's requeue, which exits); a rerun resumes it.
            status = "preempted" if is_preemption(err) else "failed"
            error = f"{type(err).__name__}: {err}"
            curves.save(run_dir)  # how far the training got
            write_metrics(run_dir, {**base, "status": status, "error": error,
                                    "wall_seconds": round(time.perf_counter() - start, 3)})
            if logger is not None:
                logger.finish(status, error)
            raise
    result = {**base, **result, "status": "ok",
              "wall_seconds": round(time.perf_counter() - start, 3)}
    saved_curves = curves.save(run_dir)
    if saved_curves is not None:
        result["curves"] = str(saved_curves)
    write_metrics(run_dir, result)
    steps = [{**flat_metrics(e), "request": e["request"]} for e in result.get("requests", [])]
    logger.log_result(result, stage.scalars(result), steps, curves.points)
    logger.finish()
    log.info("run %s done in %.0f s: %s", name, result["wall_seconds"], run_dir)
    return result


def _try(name) -> str:
    try:
        return name()
    except Exception:  # noqa: BLE001 - a config too broken to name; validate says why
        return "?"


def _config_record(cfg: DictConfig) -> dict:
    """The config as metrics.json records it: resolved, or as written if it cannot be resolved
    (validate then says why)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - any resolution error; validate reports it properly
        return OmegaConf.to_container(cfg, resolve=False)


def print_summary(result: dict) -> None:
    for line in stage_of(result["config"].get("stage", "unlearn")).summary(result):
        log.info("%s", line)


def sweep_group(hc) -> str:
    """The W&B group of a sweep's jobs, one per sweep: its experiment (if any) and its
    directory's last two parts (outputs/multirun/<date>/<time> by default)."""
    where = Path(hc.sweep.dir)
    experiment = hc.runtime.choices.get("experiment")
    stamp = f"{where.parent.name}_{where.name}"
    return stamp if experiment in (None, "null") else f"{experiment}_{stamp}"


class SweepBanner(Callback):
    """Prints a sweep's directory when it starts and ends (conf/config.yaml hydra.callbacks)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        print(f"sweep: {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        print(f"sweep done: {config.hydra.sweep.dir} (its table: python -m runner.report "
              f"{config.hydra.sweep.dir})", flush=True)


class JobError(CompactHydraException):
    """A sweep job's user error, as Hydra prints it at the sweep's end: its message alone."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    sweep = hc.mode.name == "MULTIRUN"
    try:
        result = execute(cfg, Path(hc.runtime.output_dir), sweep_group(hc) if sweep else None,
                         hc.job.override_dirname or None)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        if sweep:  # the sweep's other jobs still run; Hydra exits non-zero at its end, and
            raise JobError(one_line(err)) from None  # prints this one line, no traceback
        sys.exit(2)
    print_summary(result)
    return result.get("avg_gap", 0.0)


if __name__ == "__main__":
    main()
