"""Reference models for membership inference (RMIA), and cached population outputs.

Reference model m trains from scratch, with the run's model and recipe and the one training loop,
on the population samples (train + test, in that order) that row m of `keep_matrix(M, P, seed)`
marks IN; its torch seed is m. It is a cache artifact like the original, keyed by what determines
it (the forget set is not part of it), so every run, method and seed on the same data, model and
recipe shares it. `python -m runner -m stage=reference reference.index='range(0,16)'` trains them
as independent jobs sharing the cache dir (one model per job); a later run finds them all.

Each model's logits on the population are cached too (kind `logits`, keyed by the model's key and
the dataset fingerprint), so a second evaluation neither trains nor runs any reference model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from omegaconf import DictConfig

from data import datasets
from data.splits import keep_matrix
from runner.cache import Cache, key_of
from runner.evaluate import predict
from runner.plan import Plan
from runner.trained import RunState, Trainer, eval_batch_size, load_dataset, resolve_device
from runner.typed import ConfigError, check_value, Seed

log = logging.getLogger("runner")


def check(ref: DictConfig) -> None:
    """The `reference` block: an even number of models, a valid index, a seed."""
    if not isinstance(ref.num_models, int) or ref.num_models < 2 or ref.num_models % 2:
        raise ConfigError(f"reference.num_models must be an even integer >= 2 (each sample is IN "
                          f"for exactly half), got {ref.num_models!r}")
    if ref.index is not None and not (isinstance(ref.index, int) and 0 <= ref.index < ref.num_models):
        raise ConfigError(f"reference.index must be null or in [0, {ref.num_models - 1}], "
                          f"got {ref.index!r}")
    check_value(ref.seed, Seed, "reference.seed")


def _logits_spec(model_key: str, dataset_fingerprint: str) -> dict:
    return {"model": model_key, "dataset": dataset_fingerprint, "what": "population logits"}


@dataclass
class ReferenceOutputs:
    logits: np.ndarray       # float32 (M, P, C): each reference model on the population
    labels: np.ndarray       # int64 (P,)


def cached_logits(cache: Cache, model_key: str, dataset_fingerprint: str,
                  compute: Callable[[], np.ndarray]) -> np.ndarray:
    """float32 population logits of the cached model `model_key`: loaded, or computed and stored."""
    spec = _logits_spec(model_key, dataset_fingerprint)

    def write(directory: Path) -> None:
        np.save(directory / "logits.npy", np.asarray(compute(), dtype=np.float32))

    path, _, _ = cache.get_or_build("logits", spec, write)
    return np.load(path / "logits.npy")


class References:
    """The run's M reference models: trained or loaded on demand, their outputs cached."""

    def __init__(self, trainer: Trainer, spec: DictConfig, ds: datasets.Dataset, batch_size: int):
        """`spec`: the `reference` node (num_models, seed); `batch_size`: of inference."""
        self.trainer, self.cache, self.ds, self.batch_size = trainer, trainer.cache, ds, batch_size
        self.num_models = spec.num_models
        self.keep = keep_matrix(self.num_models, len(ds.train_y) + len(ds.test_y), seed=spec.seed)
        self.stats = {"num_models": self.num_models, "trained": 0, "train_seconds": 0.0,
                      "outputs_computed": 0}
        self._outputs: ReferenceOutputs | None = None
        self._used = False

    @property
    def used(self) -> bool:
        """Whether anything asked for a reference model or their outputs."""
        return self._used

    def key(self, m: int) -> str:
        """Reference model m's cache key."""
        return self.trainer.key(self.ds, np.flatnonzero(self.keep[m]), seed=m, population=True)

    def plan(self, plan: Plan, which: Iterable[int], outputs: bool) -> None:
        """Add reference models `which` to the plan; with `outputs` (only their population
        logits are needed), a model whose logits are cached is not loaded at all."""
        for m in which:
            key = self.key(m)
            name = f"reference {m + 1}/{self.num_models}"
            logits = key_of(_logits_spec(key, self.ds.fingerprint))
            if outputs and self.cache.has("logits", logits):
                plan.cached(name + " outputs", "logits", logits, True, group="reference output")
            else:
                plan.cached(name, "reference", key, self.cache.has("reference", key),
                            group="reference model")

    def model(self, m: int) -> tuple[torch.nn.Module, str]:
        """Reference model m and its cache key, training it if the cache does not have it."""
        self._used = True
        state, start = RunState(), time.perf_counter()
        model = self.trainer.train_or_load("reference", self.ds, np.flatnonzero(self.keep[m]),
                                           state, seed=m, population=True,
                                           desc=f"reference {m + 1}/{self.num_models}")
        if not state.cache_hits["reference"]:
            self.stats["trained"] += 1
            self.stats["train_seconds"] = round(self.stats["train_seconds"]
                                                + time.perf_counter() - start, 3)
        return model, state.cache_keys["reference"]

    def cached_logits(self, model_key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """`cached_logits` of the cached model `model_key` on this run's population."""
        return cached_logits(self.cache, model_key, self.ds.fingerprint, compute)

    def outputs(self) -> ReferenceOutputs:
        """Every reference model's population logits; a model is loaded (or trained) only when
        the cache lacks its logits."""
        self._used = True
        if self._outputs is None:
            population, labels = self.ds.population
            logits = []
            for m in range(self.num_models):
                key = self.key(m)
                found = self.cache.load("logits", key_of(_logits_spec(key, self.ds.fingerprint)))
                if found is None:
                    model, _ = self.model(m)
                    log.info("reference model %d/%d: population outputs", m + 1, self.num_models)
                    self.stats["outputs_computed"] += 1
                    logits.append(cached_logits(self.cache, key, self.ds.fingerprint, lambda: predict(
                        model, population, self.batch_size).cpu().numpy()))
                else:
                    logits.append(np.load(found / "logits.npy"))
            self._outputs = ReferenceOutputs(np.stack(logits), labels.cpu().numpy())
        return self._outputs


def run_reference(cfg: DictConfig, run_dir: Path) -> dict:
    """`stage=reference`: train (or find) reference model `reference.index`, or all of them when
    it is null, and cache their population outputs. Jobs of a multirun share the cache dir."""
    state = RunState()
    device = resolve_device(cfg.device)
    cache = Cache(cfg.paths.cache_dir)
    batch_size = eval_batch_size(cfg, device)
    with state.stage("data"):
        ds = load_dataset(cfg).to(device)
    refs = References(Trainer.of(cfg, cache, device), cfg.reference, ds, batch_size)
    which = range(refs.num_models) if cfg.reference.index is None else [cfg.reference.index]
    plan = Plan()
    refs.plan(plan, which, outputs=False)
    plan.log()
    population = ds.population[0]
    keys = {}
    with state.stage("reference"):
        for m in which:
            model, keys[m] = refs.model(m)
            cached_logits(cache, keys[m], ds.fingerprint,
                          lambda: predict(model, population, batch_size).cpu().numpy())
    return {"stage": "reference", "dataset": cfg.dataset.name, "seed": cfg.seed,
            "reference": {**refs.stats, "keys": keys}, "plan": plan.record(),
            "stage_seconds": state.stage_seconds,
            "device": str(device)}
