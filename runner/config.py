"""Check a composed config before any data is loaded, and the one place that instantiates partials.

Hydra's struct mode already rejects overrides of keys that do not exist. `validate` adds the rest:
typed schemas for the data-describing groups (unknown keys and wrong types fail), range checks on
the forget spec, and a signature check of every `_partial_` target (method, evaluators) so a YAML
typo or a missing hyper-parameter fails here rather than after an hour of training.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, get_args, get_origin

import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from data.splits import SplitError, check_spec

# Keys of a partial's node that are not keyword arguments of its target. A method's `use_retain`
# tells the runner whether to hand it the retain set at all; `attack` and `adversarial_from` tell it
# how to build an adversarial set (AMUN).
RESERVED = {"_target_", "_partial_", "name", "use_retain", "attack", "adversarial_from"}


class ConfigError(ValueError):
    """The composed configuration cannot describe a run."""


# Schemas of the data-describing groups. Required fields have no default (MISSING): the YAML is
# the only source of values, and a key deleted from it fails validation instead of being filled.
@dataclass
class Schedule:
    name: str = MISSING
    step_size: Optional[int] = None
    gamma: Optional[float] = None
    warmup: Optional[float] = None   # triangle: fraction of the steps spent warming up
    start: Optional[float] = None    # triangle: lr factor at the first step
    end: Optional[float] = None      # triangle: lr factor at the last step


@dataclass
class LookaheadSpec:
    start_epochs: int = MISSING
    decay_base: float = MISSING
    decay_pow: float = MISSING
    every_n_steps: int = MISSING


@dataclass
class TrainRecipe:
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING
    schedule: Schedule = MISSING
    precision: str = MISSING
    channels_last: bool = MISSING
    label_smoothing: float = MISSING
    bias_lr_scale: float = MISSING
    compile: bool = MISSING
    lookahead: Optional[LookaheadSpec] = MISSING


@dataclass
class AugmentSpec:
    crop_pad: int = MISSING
    flip: bool = MISSING
    pad_mode: str = MISSING


@dataclass
class SubsetSpec:
    train: Optional[int] = MISSING
    test: Optional[int] = MISSING
    seed: int = MISSING


@dataclass
class DatasetSpec:
    name: str = MISSING
    source: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    options: dict = field(default_factory=dict)
    channels: int = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING
    mean: list = MISSING
    std: list = MISSING
    augment: AugmentSpec = MISSING
    subset: SubsetSpec = MISSING


@dataclass
class ForgetSpec:
    kind: str = MISSING
    fraction: Optional[float] = None
    count: Optional[int] = None
    seed: Optional[int] = None
    class_id: Optional[int] = None


@dataclass
class AttackSpec:
    kind: str = MISSING
    norm: str = MISSING
    eps_init: Any = MISSING  # a positive number or "auto"
    auto_base: float = MISSING
    steps: int = MISSING
    max_doublings: int = MISSING
    batch_size: int = MISSING


def _typed(parent: DictConfig, key: str, schema: type, where: str) -> DictConfig:
    """Merge parent[key] onto its schema (unknown keys, wrong types and missing keys fail) and put
    the typed result in its place."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), parent[key])
    except OmegaConfBaseException as err:
        name = getattr(err, "full_key", None) or getattr(err, "key", None)
        at = f" ({key}.{name})" if name else ""
        message = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"{where}{at}: {message}") from None
    with open_dict(parent):
        parent[key] = typed  # attached first: its interpolations resolve against the root
    missing = sorted(OmegaConf.missing_keys(parent[key]))
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    return parent[key]


def _target(node: DictConfig, where: str) -> Callable:
    path = node.get("_target_")
    if not path or not node.get("_partial_", False):
        raise ConfigError(f"{where} needs `_target_: module.function` and `_partial_: true`")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {path}: {err}") from None


def check_partial(node: DictConfig, where: str, n_positional: int) -> Callable:
    """Check the node's keys against the target's keyword-only parameters and their types."""
    fn = _target(node, where)
    params = list(inspect.signature(fn).parameters.values())
    keyword = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    given = {k: v for k, v in node.items() if k not in RESERVED}
    unknown = sorted(set(given) - set(keyword))
    missing = sorted(k for k, p in keyword.items() if k not in given and p.default is p.empty)
    if unknown or missing:
        raise ConfigError(f"{where} ({node._target_}): unknown keys {unknown}, missing keys "
                          f"{missing}; it takes {sorted(keyword)}")
    hints = inspect.get_annotations(fn, eval_str=True)
    for k, v in given.items():
        expected = hints.get(k)
        if expected in (int, float, bool, str) and not _fits(v, expected):
            raise ConfigError(f"{where}.{k} must be {expected.__name__}, got {v!r}")
        if get_origin(expected) is Literal and v not in get_args(expected):
            raise ConfigError(f"{where}.{k} must be one of {', '.join(get_args(expected))}, "
                              f"got {v!r}")
    if len([p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]) != n_positional:
        raise ConfigError(f"{where}: {node._target_} must take {n_positional} positional arguments")
    return fn


def _fits(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def instantiate_partial(node: DictConfig, where: str, n_positional: int) -> functools.partial:
    """`fn(*positional, **node)` as a partial, after `check_partial`."""
    fn = check_partial(node, where, n_positional)
    kwargs = {k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v
              for k, v in node.items() if k not in RESERVED}
    return functools.partial(fn, **kwargs)


# Ranges of hyper-parameters that share a name across methods, evaluators and recipes:
# (lowest, highest, lowest included). None values are left to the target's own handling.
RANGES = {
    "epochs": (1, None, True), "batch_size": (1, None, True), "lr": (0.0, None, False),
    "momentum": (0.0, 1.0, True), "weight_decay": (0.0, None, True),
    "decay_every": (1, None, True), "decay_gamma": (0.0, 1.0, False),
    "num_members": (1, None, True), "C": (0.0, None, False),
    "ratio": (0.0, 1.0, True), "salun_ratio": (0.0, 1.0, False), "steps": (1, None, True),
    "max_doublings": (0, None, True), "auto_base": (0.0, None, False), "bound": (0.0, None, False), "alpha": (0.0, None, True),
    "gamma": (0.0, None, False), "temperature": (0.0, None, False), "terms": (1, None, True),
    "num_shadows": (2, None, True), "beta": (0.0, None, True), "pca_dim": (1, None, True),
}
LOGGER_MODES = ("offline", "online", "disabled")


def _check_ranges(values: dict, where: str) -> None:
    for key, value in values.items():
        if key not in RANGES or value is None or isinstance(value, bool):
            continue
        low, high, closed = RANGES[key]
        if (value < low if closed else value <= low) or (high is not None and value > high):
            bound = f"{'>=' if closed else '>'} {low}" + (f" and <= {high}" if high else "")
            raise ConfigError(f"{where}.{key} must be {bound}, got {value}")


CONF = Path(__file__).resolve().parent.parent / "conf"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32 - 1]


def top_level_keys() -> set[str]:
    """The keys a composed config may have at its top: conf/config.yaml's own and its groups'.
    A `+key=value` typo (`+sed=3`) adds one that nothing reads."""
    primary = OmegaConf.load(CONF / "config.yaml")
    keys = {k for k in primary if k != "defaults"} | {"hydra"}
    for entry in primary.get("defaults", []):
        if OmegaConf.is_config(entry) or isinstance(entry, dict):
            for name in entry:
                keys.add(str(name).split()[-1].lstrip("/"))
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


def _check_seed(value: Any, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{where} must be an integer in [0, {SEED_MAX}]"
                          f"{' or null' if optional else ''}, got {value!r}")


def _check_writable_dir(value: Any, where: str) -> None:
    """A directory the run will write into: given, and a directory that exists and is writable
    or can be made (its nearest existing parent is a writable directory)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a directory path, got {value!r}")
    path = Path(value).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{where}={value}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}={value}: {probe} is not writable")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on anything that would fail later; loads no data. The data-describing
    groups are replaced by their typed form (so `train.lr=1` is the float 1.0 everywhere)."""
    unknown = sorted(set(cfg) - top_level_keys())
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} (a +key=value typo?); the config "
                          f"has {sorted(top_level_keys() - {'hydra'})}")
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {getattr(err, 'msg', None) or err}"
                          ) from None
    _check_finite(resolved, "")
    _check_seed(cfg.seed, "seed")
    _check_seed(cfg.reference.seed, "reference.seed")
    for key in ("cache_dir", "data_dir"):
        _check_writable_dir(cfg.paths.get(key), f"paths.{key}")
    threads = cfg.get("cpu_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f"cpu_threads must be null or an integer >= 1, got {threads!r}")
    for key, schema in (("train", TrainRecipe), ("dataset", DatasetSpec), ("forget", ForgetSpec)):
        _typed(cfg, key, schema, f"config group '{key}'")
    ds, forget, train = cfg.dataset, cfg.forget, cfg.train
    if len(ds.mean) != ds.channels or len(ds.std) != ds.channels:
        raise ConfigError(f"dataset.mean/std need {ds.channels} values (one per channel)")
    for split in ("train", "test"):
        n = ds.subset[split]
        if n is not None and (n < ds.num_classes or n % ds.num_classes):
            raise ConfigError(f"dataset.subset.{split}={n}: must be a positive multiple of the "
                              f"{ds.num_classes} classes (the subset is class-balanced)")
    _check_seed(ds.subset.seed, "dataset.subset.seed")
    if forget.kind == "random":
        _check_seed(forget.seed, "forget.seed")
    try:
        check_spec(forget, ds.num_classes)
    except SplitError as err:
        raise ConfigError(f"{err} (dataset {ds.name})") from None
    if train.precision not in ("fp32", "bf16"):
        raise ConfigError(f"train.precision must be fp32 or bf16, got {train.precision!r}")
    if train.schedule.name == "step" and (train.schedule.get("step_size") or 0) < 1:
        raise ConfigError("train.schedule: the step schedule needs step_size >= 1 and gamma")
    if train.schedule.name not in ("step", "cosine", "constant", "triangle"):
        raise ConfigError(f"train.schedule.name must be step, cosine, constant or triangle, got "
                          f"{train.schedule.name!r}")
    if train.schedule.name == "triangle":
        w, a, b = (train.schedule.get(k) for k in ("warmup", "start", "end"))
        if None in (w, a, b) or not (0 < w < 1 and a >= 0 and b >= 0):
            raise ConfigError("train.schedule: the triangle schedule needs 0 < warmup < 1, "
                              f"start >= 0 and end >= 0, got warmup={w} start={a} end={b}")
    if not 0 <= train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {train.label_smoothing}")
    if train.bias_lr_scale <= 0:
        raise ConfigError(f"train.bias_lr_scale must be > 0, got {train.bias_lr_scale}")
    la = train.lookahead
    if la is not None and cfg.model.get("clip") is not None:
        raise ConfigError("model.clip with train.lookahead: the lookahead's average of the "
                          "weights would undo the clipping; set train.lookahead=null")
    if la is not None and not (la.start_epochs >= 0 and 0 < la.decay_base < 1
                               and la.decay_pow >= 0 and la.every_n_steps >= 1):
        raise ConfigError("train.lookahead needs start_epochs >= 0, 0 < decay_base < 1, "
                          f"decay_pow >= 0 and every_n_steps >= 1, got {dict(la)}")
    aug = ds.augment
    if aug.crop_pad < 0:
        raise ConfigError(f"dataset.augment.crop_pad must be >= 0, got {aug.crop_pad}")
    if aug.pad_mode not in ("zeros", "reflect"):
        raise ConfigError(f"dataset.augment.pad_mode must be zeros or reflect, got {aug.pad_mode!r}")
    if aug.pad_mode == "reflect" and aug.crop_pad >= ds.image_size:
        raise ConfigError(f"dataset.augment: reflect padding needs crop_pad < image_size "
                          f"({ds.image_size}), got {aug.crop_pad}")
    _check_ranges(dict(train), "train")
    if cfg.stage not in ("unlearn", "reference", "ensemble"):
        raise ConfigError(f"stage must be unlearn, reference or ensemble, got {cfg.stage!r}")
    _check_ensemble(cfg)
    ref = cfg.reference
    if not isinstance(ref.num_models, int) or ref.num_models < 2 or ref.num_models % 2:
        raise ConfigError(f"reference.num_models must be an even integer >= 2 (each sample is IN "
                          f"for exactly half), got {ref.num_models!r}")
    if ref.index is not None and not (isinstance(ref.index, int) and 0 <= ref.index < ref.num_models):
        raise ConfigError(f"reference.index must be null or in [0, {ref.num_models - 1}], "
                          f"got {ref.index!r}")
    if isinstance(cfg.requests, bool) or not isinstance(cfg.requests, int) or cfg.requests < 1:
        raise ConfigError(f"requests must be an integer >= 1, got {cfg.requests!r}")
    every_s = cfg.checkpoint.every_s
    if every_s is not None and (isinstance(every_s, bool) or not isinstance(every_s, (int, float))
                                or every_s < 0):
        raise ConfigError(f"checkpoint.every_s must be null or a number of seconds >= 0, "
                          f"got {every_s!r}")
    if cfg.eval_batch_size is not None and cfg.eval_batch_size < 1:
        raise ConfigError(f"eval_batch_size must be null or >= 1, got {cfg.eval_batch_size}")
    method = check_partial(cfg.method, "method", n_positional=2)
    _check_ranges(dict(cfg.method), "method")
    if not isinstance(cfg.method.get("use_retain"), bool):
        raise ConfigError("method.use_retain must be true or false")
    if getattr(method, "needs_retain", False) and not cfg.method.use_retain:
        raise ConfigError(f"method {cfg.method.name} needs the retain set; use_retain=false "
                          "is not possible for it")
    if getattr(method, "needs_adversarial", False):
        _check_attack(cfg.method)
    if getattr(method, "needs_class_forget", False) and forget.kind != "class":
        raise ConfigError(f"method {cfg.method.name} forgets a whole class: use forget=class "
                          "forget.class_id=K")
    for name, node in cfg.eval.evaluators.items():
        check_partial(node, f"eval.evaluators.{name}", n_positional=2)
        _check_ranges(dict(node), f"eval.evaluators.{name}")
        shadows = node.get("num_shadows")
        if shadows is not None and shadows > cfg.reference.num_models:
            raise ConfigError(f"eval.evaluators.{name}.num_shadows={shadows}: the shadows are "
                              f"reference models, so at most reference.num_models "
                              f"({cfg.reference.num_models})")
        if shadows is not None and cfg.requests > 1:
            raise ConfigError(f"eval.evaluators.{name} (shadow models) evaluates one-shot "
                              "unlearning; it cannot run with requests > 1")
    unknown_gap = set(cfg.eval.gap_metrics) - _metric_names(cfg)
    if unknown_gap:
        raise ConfigError(f"eval.gap_metrics names {sorted(unknown_gap)}, which no evaluator "
                          f"reports for forget={forget.kind}")
    if cfg.logger.kind not in ("wandb", "none"):
        raise ConfigError(f"logger.kind must be wandb or none, got {cfg.logger.kind!r}")
    if cfg.logger.kind == "wandb" and cfg.logger.mode not in LOGGER_MODES:
        raise ConfigError(f"logger.mode must be one of {LOGGER_MODES}, got {cfg.logger.mode!r}")
    if not (isinstance(cfg.device, str) and DEVICE.fullmatch(cfg.device)):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_model(cfg)


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


def _check_ensemble(cfg: DictConfig) -> None:
    e = cfg.ensemble
    a = e.attack
    if isinstance(e.members, bool) or not isinstance(e.members, int) or e.members < 2:
        raise ConfigError(f"ensemble.members must be an integer >= 2, got {e.members!r}")
    numbers = {"lotos_weight": e.lotos_weight, "lotos_mal": e.lotos_mal, "attack.eps": a.eps,
               "attack.step_ratio": a.step_ratio}
    integers = {"attack.steps": a.steps, "attack.n": a.n}
    for name, value in [*numbers.items(), *integers.items()]:
        kind, what = ((int, float), "a number") if name in numbers else (int, "an integer")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"ensemble.{name} must be {what}, got {value!r}")
    if not (e.lotos_weight >= 0 and e.lotos_mal >= 0):
        raise ConfigError(f"ensemble.lotos_weight and lotos_mal must be >= 0, got "
                          f"{e.lotos_weight} and {e.lotos_mal}")
    if e.lotos_weight and cfg.model.get("clip") is None:
        raise ConfigError("ensemble.lotos_weight > 0: LOTOS works on the singular vectors FastClip "
                          "keeps, so it needs clipped members (model.clip=1.0, say)")
    if a.norm not in ("l2", "linf") or not a.eps > 0 or not a.step_ratio > 0 or a.steps < 1 \
            or a.n < 1:
        raise ConfigError(f"ensemble.attack needs norm l2 or linf, eps > 0, step_ratio > 0, "
                          f"steps >= 1 and n >= 1, got {dict(a)}")


def _check_attack(method: DictConfig) -> None:
    """The attack that builds an adversarial set: typed, and its choices and ranges sane."""
    if "attack" not in method:
        raise ConfigError(f"method {method.name} needs an `attack` block (see conf/method/amun.yaml)")
    if method.get("adversarial_from") not in ("original", "current"):
        raise ConfigError("method.adversarial_from must be original (reuse the original model's "
                          "adversarial set) or current (rebuild it per request), got "
                          f"{method.get('adversarial_from')!r}")
    attack = _typed(method, "attack", AttackSpec, "method.attack")
    if attack.kind not in ("pgd", "fgsm") or attack.norm not in ("l2", "linf"):
        raise ConfigError("method.attack.kind must be pgd or fgsm and norm l2 or linf, got "
                          f"{attack.kind!r} and {attack.norm!r}")
    eps = attack.eps_init
    if eps == "auto" and attack.kind != "pgd":
        raise ConfigError("method.attack.eps_init=auto searches with PGD; give fgsm a number")
    if eps != "auto" and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0):
        raise ConfigError(f"method.attack.eps_init must be a positive number or auto, got {eps!r}")
    _check_ranges(dict(attack), "method.attack")


def _metric_names(cfg: DictConfig) -> set[str]:
    names: set[str] = set()
    for node in cfg.eval.evaluators.values():
        fn = _target(node, "evaluator")
        names |= set(getattr(fn, "metric_names", ()))
        if cfg.forget.kind == "class":
            names |= set(getattr(fn, "class_metric_names", ()))
    return names


# The model config's clipping keys (models.fastclip.ClipSpec's fields); not constructor arguments.
CLIP_KEYS = {"clip": "target", "clip_every": "every", "clip_steps": "steps",
             "clip_push_up": "push_up"}


def build_model(model_cfg: DictConfig, dataset_cfg: DictConfig):
    """Instantiate the model for this dataset: channels, classes, size and normalization come from
    the dataset config; `normalize: false` feeds raw [0, 1] pixels (mean 0, std 1). With `clip` set,
    every conv and linear layer is clipped to it during training (models.fastclip.attach)."""
    from hydra.utils import instantiate

    from models.fastclip import ClipSpec, attach

    kwargs = {k: v for k, v in model_cfg.items() if k != "normalize" and k not in CLIP_KEYS}
    c = dataset_cfg.channels
    mean, std = (list(dataset_cfg.mean), list(dataset_cfg.std)) if model_cfg.normalize else ([0.0] * c, [1.0] * c)
    model = instantiate(kwargs, num_classes=dataset_cfg.num_classes, in_channels=c,
                        image_size=dataset_cfg.image_size, mean=mean, std=std)
    if model_cfg.get("clip") is not None:
        spec = ClipSpec(**{field: model_cfg[key] for key, field in CLIP_KEYS.items()
                           if key in model_cfg})
        attach(model, spec, torch.zeros(1, c, dataset_cfg.image_size, dataset_cfg.image_size))
    return model
