"""Typed configs: a config node's schema is the code it configures.

- A `_target_` function's keyword-only parameters are the schema of its node (`check_target`):
  each annotation gives the type, `Literal[...]` the choices and `Annotated[T, Range(...)]` the
  allowed values, so a range is declared per parameter of a method, not per bare name.
- A dataclass is the schema of a data-describing group (`typed`): OmegaConf rejects unknown keys
  and wrong types, `Range` metadata on fields bounds the values, and the dataclass is then built,
  so its `__post_init__` checks the group's own rules next to the code that reads the group.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """The composed configuration cannot describe a run."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ge/gt below, le above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def check(self, value: Any, where: str) -> None:
        if value is None or isinstance(value, bool):
            return
        low = self.ge if self.ge is not None else self.gt
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)):
            bound = " and ".join(
                ([f"{'>=' if self.ge is not None else '>'} {low}"] if low is not None else [])
                + ([f"<= {self.le}"] if self.le is not None else []))
            raise ConfigError(f"{where} must be {bound}, got {value}")


# The hyper-parameters most targets share.
Count = Annotated[int, Range(ge=1)]
Epochs = Count
BatchSize = Count
Steps = Count
LR = Annotated[float, Range(gt=0.0)]
Positive = Annotated[float, Range(gt=0.0)]
NonNegative = Annotated[float, Range(ge=0.0)]
Momentum = Annotated[float, Range(ge=0.0, le=1.0)]
DecayGamma = Annotated[float, Range(gt=0.0, le=1.0)]
Ratio = Annotated[float, Range(gt=0.0, le=1.0)]      # a share that cannot be empty
Fraction = Annotated[float, Range(ge=0.0, le=1.0)]
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32 - 1]
Seed = Annotated[int, Range(ge=0, le=SEED_MAX)]


def _parts(hint: Any) -> tuple[Any, bool, list]:
    """(base type, None allowed, the Range/Literal checks) of an annotation."""
    optional, checks = False, []
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else Any
    if typing.get_origin(hint) is Annotated:
        hint, *meta = typing.get_args(hint)
        checks = [m for m in meta if isinstance(m, Range)]
    return hint, optional, checks


def check_value(value: Any, hint: Any, where: str) -> None:
    """Raise ConfigError unless `value` fits the annotation `hint` (int, float, bool, str, a
    Literal, optionally Optional and Annotated with a Range)."""
    base, optional, checks = _parts(hint)
    if value is None and optional:
        return
    if typing.get_origin(base) is Literal:
        if value not in typing.get_args(base):
            raise ConfigError(f"{where} must be one of {', '.join(map(str, typing.get_args(base)))}"
                              f", got {value!r}")
        return
    if base in (int, float, bool, str) and not _fits(value, base):
        raise ConfigError(f"{where} must be {base.__name__}, got {value!r}")
    for check in checks:
        check.check(value, where)


def _fits(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def import_target(path: str | None, where: str) -> Any:
    """The object a dotted `module.name` path names."""
    module, _, name = (path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{where}: cannot import {path}: {err}") from None


def check_target(node: DictConfig, where: str, n_positional: int,
                 reserved: frozenset[str] = frozenset()) -> Callable:
    """The node's `_target_` function, after checking the node's keys (less `reserved` ones, which
    its caller reads) against the function's keyword-only parameters and their annotations."""
    if not node.get("_target_") or not node.get("_partial_", False):
        raise ConfigError(f"{where} needs `_target_: module.function` and `_partial_: true`")
    fn = import_target(node._target_, where)
    params = list(inspect.signature(fn).parameters.values())
    keyword = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    given = {k: v for k, v in node.items() if k not in reserved | {"_target_", "_partial_"}}
    unknown = sorted(set(given) - set(keyword))
    missing = sorted(k for k, p in keyword.items() if k not in given and p.default is p.empty)
    if unknown or missing:
        raise ConfigError(f"{where} ({node._target_}): unknown keys {unknown}, missing keys "
                          f"{missing}; it takes {sorted(keyword)}")
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn, include_extras=True)
    for k, v in given.items():
        if k in hints:
            check_value(v, hints[k], f"{where}.{k}")
    if len([p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]) != n_positional:
        raise ConfigError(f"{where}: {node._target_} must take {n_positional} positional arguments")
    return fn


def partial_of(node: DictConfig, where: str, n_positional: int,
               reserved: frozenset[str] = frozenset()) -> functools.partial:
    """`fn(*positional, **node)` as a partial, after `check_target`."""
    fn = check_target(node, where, n_positional, reserved)
    kwargs = {k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v
              for k, v in node.items() if k not in reserved | {"_target_", "_partial_"}}
    return functools.partial(fn, **kwargs)


def typed(parent: DictConfig, key: str, schema: type, where: str, prefix: str | None = None) -> Any:
    """Merge parent[key] onto the dataclass `schema` (unknown keys, wrong types and missing keys
    fail), put the typed node in its place (so `train.lr=1` is 1.0 for everyone), check the
    fields' ranges (named `prefix.field`; prefix defaults to key) and return the built dataclass
    (its `__post_init__` has run)."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), parent[key])
    except OmegaConfBaseException as err:
        name = getattr(err, "full_key", None) or getattr(err, "key", None)
        at = f" ({key}.{name})" if name else ""
        message = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"{where}{at}: {message}") from None
    with open_dict(parent):
        parent[key] = node  # attached first: its interpolations resolve against the root
    missing = sorted(OmegaConf.missing_keys(parent[key]))
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    _check_fields(schema, parent[key], prefix or key)
    try:
        return OmegaConf.to_object(parent[key])
    except ValueError as err:  # a __post_init__ rule
        raise ConfigError(str(err)) from None


def _check_fields(schema: type, node: DictConfig, where: str) -> None:
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        value = node.get(f.name)
        base = _parts(hints[f.name])[0]
        if dataclasses.is_dataclass(base) and OmegaConf.is_config(value):
            _check_fields(base, value, f"{where}.{f.name}")
        else:
            for check in _parts(hints[f.name])[2]:
                check.check(value, f"{where}.{f.name}")
