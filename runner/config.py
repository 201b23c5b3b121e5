"""Check a composed config before any data is loaded: `validate`.

Hydra's struct mode already rejects overrides of keys that do not exist. Each group's schema sits
with the code it configures (runner.typed): `train` in runner.recipe, `dataset` in data.dataset,
`forget` in data.splits, what a method prepares (runner.adversarial: its attack), `reference`
and `ensemble` in their modules; a method or an evaluator is checked against its function's
signature. What is left here: the top-level keys and the rules that span groups.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.dataset import DatasetSpec
from data.splits import ForgetSpec, SplitError, check_spec
from methods.common import check_method
from models.build import build_model, check_model
from runner import ensemble, reference
from runner.recipe import Recipe
from runner.saved import read_state
from runner.stages import stage_of
from runner.evaluate import check_evaluators
from runner.typed import ConfigError, Seed, check_target, check_value, typed

__all__ = ["ConfigError", "validate"]
CONF = Path(__file__).resolve().parent.parent / "conf"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def top_level_keys() -> set[str]:
    """The keys a composed config may have at its top: conf/config.yaml's own and the config
    groups' (conf/'s folders). A `+key=value` typo (`+sed=3`) adds one that nothing reads."""
    primary = OmegaConf.load(CONF / "config.yaml")
    return ({k for k in primary if k != "defaults"} | {"hydra"}
            | {p.name for p in CONF.iterdir() if p.is_dir()})


def _check_finite(node: Any, where: str) -> None:
    """NaN or inf anywhere in the config (`train.lr=nan`) passes every range check, since every
    comparison with NaN is false; none of our parameters means anything at either."""
    if OmegaConf.is_dict(node):
        for k in node:
            _check_finite(node[k], f"{where}.{k}" if where else str(k))
    elif OmegaConf.is_list(node):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where} must be a finite number, got {node}")


def _check_writable_dir(value: Any, where: str) -> None:
    """A directory the run will write into: given, and a directory that exists and is writable
    or can be made (its nearest existing parent is a writable directory)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a directory path, got {value!r}")
    probe = Path(value).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{where}={value}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}={value}: {probe} is not writable")


def _check_int(value: Any, where: str, low: int, optional: bool = True) -> None:
    if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)
                                        and value >= low):
        return
    raise ConfigError(f"{where} must be {'null or ' if optional else ''}an integer >= {low}, "
                      f"got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on anything that would fail later; loads no data. The data-describing
    groups are replaced by their typed form (so `train.lr=1` is the float 1.0 everywhere)."""
    unknown = sorted(set(cfg) - top_level_keys())
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} (a +key=value typo?); the config "
                          f"has {sorted(top_level_keys() - {'hydra'})}")
    try:
        _check_finite(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), "")
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {getattr(err, 'msg', None) or err}"
                          ) from None
    check_value(cfg.seed, Seed, "seed")
    check_value(cfg.save_unlearned, bool, "save_unlearned")
    check_value(cfg.save_samples, bool, "save_samples")
    check_value(cfg.cache.evaluations, bool, "cache.evaluations")
    check_value(cfg.cache.unlearned, bool, "cache.unlearned")
    check_value(cfg.figures, bool, "figures")
    for key in ("cache_dir", "data_dir"):
        _check_writable_dir(cfg.paths.get(key), f"paths.{key}")
    _check_int(cfg.get("cpu_threads"), "cpu_threads", 1)
    _check_int(cfg.requests, "requests", 1, optional=False)
    if cfg.eval_batch_size is not None and cfg.eval_batch_size < 1:
        raise ConfigError(f"eval_batch_size must be null or >= 1, got {cfg.eval_batch_size}")
    every_s = cfg.checkpoint.every_s
    if every_s is not None and (isinstance(every_s, bool) or not isinstance(every_s, (int, float))
                                or every_s < 0):
        raise ConfigError(f"checkpoint.every_s must be null or a number of seconds >= 0, "
                          f"got {every_s!r}")
    if not (isinstance(cfg.device, str) and DEVICE.fullmatch(cfg.device)):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    typed(cfg, "train", Recipe, "config group 'train'")
    ds = typed(cfg, "dataset", DatasetSpec, "config group 'dataset'")
    typed(cfg, "forget", ForgetSpec, "config group 'forget'")
    try:
        check_spec(cfg.forget, ds.num_classes)
    except SplitError as err:
        raise ConfigError(f"{err} (dataset {ds.name})") from None
    if cfg.train.lookahead is not None and cfg.model.get("clip") is not None:
        raise ConfigError("model.clip with train.lookahead: the lookahead's average of the "
                          "weights would undo the clipping; set train.lookahead=null")
    stage_of(cfg.stage)
    ensemble.check(cfg)
    reference.check(cfg.reference)
    check_evaluators(cfg)
    check_target(cfg.logger, "logger", 5)
    try:
        check_model(cfg.model, cfg.dataset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_method(cfg)  # after the model: a method's own check may build it
    for where in ("original.checkpoint", "unlearned.checkpoint"):
        given = OmegaConf.select(cfg, where)
        if given is not None:  # before any data: the file against the configured architecture
            check_value(given, str, where)
            with torch.random.fork_rng(devices=[]):  # building it draws no number of the run's
                read_state(given, build_model(cfg.model, cfg.dataset), where)
    if cfg.unlearned.checkpoint is not None and cfg.stage != "unlearn":
        raise ConfigError(f"unlearned.checkpoint is evaluated by stage=unlearn, not "
                          f"stage={cfg.stage}")
    if cfg.unlearned.checkpoint is not None and cfg.requests != 1:
        raise ConfigError(f"unlearned.checkpoint with requests={cfg.requests}: a given model is "
                          "one unlearning; set requests=1")
