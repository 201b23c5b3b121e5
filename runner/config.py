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
from models.build import build_model
from runner import ensemble, reference
from runner.recipe import Recipe
from runner.typed import (ConfigError, Seed, check_target, check_value, import_target,
                          typed)

__all__ = ["ConfigError", "validate", "method_keys"]


def method_keys(fn) -> frozenset[str]:
    """Keys of a method's node that are not keyword arguments of its function: `name`,
    `use_retain` (whether the runner hands it the retain set) and those its preparations read
    (`unlearn.prepares`; AMUN's D_A: `attack`, `adversarial_from`)."""
    return frozenset({"name", "use_retain"}.union(*(p.keys for p in getattr(fn, "prepares", ()))))
CONF = Path(__file__).resolve().parent.parent / "conf"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
LOGGER_MODES = ("offline", "online", "disabled")


def top_level_keys() -> set[str]:
    """The keys a composed config may have at its top: conf/config.yaml's own and its groups'.
    A `+key=value` typo (`+sed=3`) adds one that nothing reads."""
    primary = OmegaConf.load(CONF / "config.yaml")
    keys = {k for k in primary if k != "defaults"} | {"hydra"}
    for entry in primary.get("defaults", []):
        if OmegaConf.is_config(entry) or isinstance(entry, dict):
            keys |= {str(name).split()[-1].lstrip("/") for name in entry}
    return keys


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
    if cfg.stage not in ("unlearn", "reference", "ensemble"):
        raise ConfigError(f"stage must be unlearn, reference or ensemble, got {cfg.stage!r}")
    ensemble.check(cfg)
    reference.check(cfg.reference)
    _check_method(cfg)
    _check_evaluators(cfg)
    if cfg.logger.kind not in ("wandb", "none"):
        raise ConfigError(f"logger.kind must be wandb or none, got {cfg.logger.kind!r}")
    if cfg.logger.kind == "wandb" and cfg.logger.mode not in LOGGER_MODES:
        raise ConfigError(f"logger.mode must be one of {LOGGER_MODES}, got {cfg.logger.mode!r}")
    _check_model(cfg)


def _check_method(cfg: DictConfig) -> None:
    path = cfg.method.get("_target_")
    method = check_target(cfg.method, "method", 2,
                          method_keys(import_target(path, "method") if path else None))
    if not isinstance(cfg.method.get("use_retain"), bool):
        raise ConfigError("method.use_retain must be true or false")
    if getattr(method, "needs_retain", False) and not cfg.method.use_retain:
        raise ConfigError(f"method {cfg.method.name} needs the retain set; use_retain=false "
                          "is not possible for it")
    for preparation in getattr(method, "prepares", ()):
        preparation.check(cfg.method)
    if getattr(method, "needs_class_forget", False) and cfg.forget.kind != "class":
        raise ConfigError(f"method {cfg.method.name} forgets a whole class: use forget=class "
                          "forget.class_id=K")


def _check_evaluators(cfg: DictConfig) -> None:
    names: set[str] = set()
    for name, node in cfg.eval.evaluators.items():
        fn = check_target(node, f"eval.evaluators.{name}", 2)
        names |= set(getattr(fn, "metric_names", ()))
        if cfg.forget.kind == "class":
            names |= set(getattr(fn, "class_metric_names", ()))
        shadows = node.get("num_shadows")
        if shadows is not None and shadows > cfg.reference.num_models:
            raise ConfigError(f"eval.evaluators.{name}.num_shadows={shadows}: the shadows are "
                              f"reference models, so at most reference.num_models "
                              f"({cfg.reference.num_models})")
        if shadows is not None and cfg.requests > 1:
            raise ConfigError(f"eval.evaluators.{name} (shadow models) evaluates one-shot "
                              "unlearning; it cannot run with requests > 1")
    unknown_gap = set(cfg.eval.gap_metrics) - names
    if unknown_gap:
        raise ConfigError(f"eval.gap_metrics names {sorted(unknown_gap)}, which no evaluator "
                          f"reports for forget={cfg.forget.kind}")


def _check_model(cfg: DictConfig) -> None:
    """Build the model once on the CPU (well under a second): a misspelled option, or data the
    architecture cannot take (airbench on 8x8 digits), fails here and not after data loading."""
    from hydra.errors import InstantiationException

    try:
        with torch.random.fork_rng(devices=[]):  # the run's random streams stay untouched
            build_model(cfg.model, cfg.dataset)
    except (InstantiationException, TypeError, ValueError) as err:
        raise ConfigError(f"model {cfg.model.get('_target_')} for dataset {cfg.dataset.name}: "
                          f"{err}") from None
