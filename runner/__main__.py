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
from omegaconf import DictConfig, OmegaConf

from data.readers import DatasetError
from data.splits import SplitError
from runner.checkpoint import is_preemption
from runner.config import ConfigError, validate
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


def execute(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict:
    """Validate, run every stage, and record the outcome (metrics.json, W&B), failed or not."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with claimed(run_dir):
        return _execute(cfg, run_dir, group)


def _execute(cfg: DictConfig, run_dir: Path, group: str | None) -> dict:
    stage = STAGES.get(cfg.get("stage"), STAGES["unlearn"])  # validate refuses an unknown stage
    name = f"{_try(lambda: stage.what(cfg))}-{cfg.dataset.get('name', '?')}-seed{cfg.get('seed')}"
    base = {"git_commit": git_commit(), "run_dir": str(run_dir), "name": name,
            "config": _config_record(cfg)}
    # Replaces any earlier result in this dir at once: a run that fails or is killed from here on
    # leaves "failed" or "running", never a stale "ok" that a report would count; the config lets
    # the report put even a run killed outright into its table cell.
    write_metrics(run_dir, {**base, "status": "running"})
    logger, start = None, time.perf_counter()
    try:
        validate(cfg)  # before any data is loaded or any model trained
        base["config"] = OmegaConf.to_container(cfg, resolve=True)  # typed by validate
        base["cpu_threads"] = set_cpu_threads(cfg.cpu_threads)
        logger = partial_of(cfg.logger, "logger", 4)(base["config"], run_dir, name, group)
        result = stage_of(cfg.stage).run(cfg, run_dir)
    except BaseException as err:
        # preempted: stopped by a signal with its training state saved (by us, then maybe by
        # submitit's requeue, which exits); a rerun resumes it.
        status = "preempted" if is_preemption(err) else "failed"
        write_metrics(run_dir, {**base, "status": status, "error": f"{type(err).__name__}: {err}",
                                "wall_seconds": round(time.perf_counter() - start, 3)})
        if logger is not None:
            logger.finish(exit_code=1)
        raise
    result = {**base, **result, "status": "ok",
              "wall_seconds": round(time.perf_counter() - start, 3)}
    write_metrics(run_dir, result)
    steps = [{**flat_metrics(e), "request": e["request"]} for e in result.get("requests", [])]
    logger.log_result(result, stage.scalars(result), steps)
    logger.finish()
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


class JobError(CompactHydraException):
    """A sweep job's user error, as Hydra prints it at the sweep's end: its message alone."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    sweep = hc.mode.name == "MULTIRUN"
    try:
        result = execute(cfg, Path(hc.runtime.output_dir),
                         Path(hc.sweep.dir).name if sweep else None)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        if sweep:  # the sweep's other jobs still run; Hydra exits non-zero at its end, and
            raise JobError(one_line(err)) from None  # prints this one line, no traceback
        sys.exit(2)
    print_summary(result)
    return result.get("avg_gap", 0.0)


if __name__ == "__main__":
    main()
