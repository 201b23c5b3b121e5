"""Models trained from scratch through the cache: the original, the retrain oracle and the
reference models of membership attacks, plus the run's data and device. The pipeline and the
reference-model stage share these."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data import datasets
from data.loader import Augment, Batches
from data.splits import index_digest
from runner.cache import Cache, code_fingerprint, key_of, load_model, save_model
from runner.checkpoint import TrainCheckpoint
from models.build import CLIP_KEYS, build_model
from runner.recipe import schedule_spec
from runner.train import check_finite, train_from_scratch
from runner.typed import ConfigError

log = logging.getLogger("runner")


@dataclass
class RunState:
    """What the run has done so far; becomes metrics.json."""

    stage_seconds: dict = field(default_factory=dict)
    cache_keys: dict = field(default_factory=dict)
    cache_hits: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        log.info("stage %s ...", name)
        yield
        self.stage_seconds[name] = round(time.perf_counter() - start, 3)
        log.info("stage %s done in %.1f s", name, self.stage_seconds[name])


# Inference batch when eval_batch_size is null: large on a GPU; on a CPU inference is bound by
# compute and caches, and batch 128 was fastest here (benchmarks/throughput.py, docs/results/bench.md).
EVAL_BATCH = {"cuda": 1024, "cpu": 128}


def eval_batch_size(cfg: DictConfig, device: torch.device) -> int:
    """cfg.eval_batch_size, or the device's default (EVAL_BATCH) when it is null."""
    if cfg.eval_batch_size is not None:
        return cfg.eval_batch_size
    return EVAL_BATCH.get(device.type, 1024)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available")
    return device


def native_precision(device: torch.device) -> str:
    """bf16 where the device computes it natively (CUDA, or a CPU that oneDNN runs bf16 on:
    AVX512-BF16 or AMX), fp32 elsewhere: an AVX2-only CPU emulates bf16, and a width-16 ResNet-18
    step at batch 128 measured 13x slower in bf16 than in fp32 on one."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:  # a private op, not in every build
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def set_cpu_threads(count: int | None) -> int:
    """Fix torch's intra-op thread count for the run and return it: `count`, or (None) every CPU
    this process may run on (its affinity mask, which launchers leave alone, unlike the
    OMP_NUM_THREADS that joblib sets to 1 in its workers). On a CPU, a model's bytes depend on the
    thread count, so it is part of every CPU-trained model's cache key (`train_or_load`): each
    launcher trains the same model for the same config, and another count is another model."""
    n = count if count is not None else len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return torch.get_num_threads()


def load_dataset(cfg: DictConfig) -> datasets.Dataset:
    """Load the dataset and check it against what its config promised."""
    d = cfg.dataset
    ds = datasets.load(d.name, root=d.root, source=d.source, download=d.download,
                       cache_dir=cfg.paths.cache_dir, **OmegaConf.to_container(d.options, resolve=True))
    try:
        ds = ds.subset(d.subset.train, d.subset.test, seed=d.subset.seed)
    except ValueError as err:
        raise ConfigError(f"dataset.{err}") from None
    expected = (d.channels, d.image_size, d.image_size)
    if ds.shape != expected or ds.num_classes != d.num_classes:
        raise ConfigError(f"dataset {d.name} has images {ds.shape} and {ds.num_classes} classes; "
                          f"the config says {expected} and {d.num_classes}")
    return ds


# The code a trained model depends on: its key changes when any of it changes. Taken once, at
# import, so it describes the code this process runs even if the files are edited meanwhile.
# Every file the training of a model runs: the architectures and their construction (models/),
# the loop, its optimizer and schedules, the batch stream, and the checkpoint replay.
REPO = Path(__file__).resolve().parent.parent
TRAINING_FILES = (*sorted((REPO / "models").glob("*.py")),
                  *(REPO / "runner" / f for f in ("train.py", "trained.py", "optim.py", "hooks.py",
                                                  "recipe.py", "checkpoint.py")),
                  REPO / "data" / "loader.py")
TRAINING_CODE = code_fingerprint(TRAINING_FILES)


@dataclass(frozen=True)
class Trainer:
    """How a run trains models from scratch through the cache, and the config pieces that
    determine such a model: the `model`, `dataset` and `train` nodes and the run's seed; and
    where it trains (the cache, the device, the checkpoint interval, which change no model). The
    original, the oracle, the reference and shadow models and an ensemble all come from it."""

    model: DictConfig
    dataset: DictConfig
    recipe: DictConfig
    seed: int
    cache: Cache | None
    device: torch.device
    checkpoint_every_s: float | None = None

    @classmethod
    def of(cls, cfg: DictConfig, cache: Cache | None, device: torch.device) -> "Trainer":
        checkpoint = cfg.get("checkpoint") or {}
        return cls(cfg.model, cfg.dataset, cfg.train, cfg.seed, cache, device,
                   checkpoint.get("every_s"))

    def model_spec(self, ds: datasets.Dataset, train_idx: np.ndarray, *, seed: int | None = None,
                   population: bool = False) -> dict:
        """Exactly what determines a model trained from scratch: the cache key's content.
        `population`: train_idx indexes train + test (reference models), not the training set."""
        recipe = OmegaConf.to_container(self.recipe, resolve=True)
        # Only the schedule's own parameters: a cosine schedule's unused step_size changes nothing.
        recipe["schedule"] = schedule_spec(recipe["schedule"])
        model = OmegaConf.to_container(self.model, resolve=True)
        model.pop("tta", None)  # test-time augmentation changes no weight: one model serves all
        if model.get("clip") is None:  # how a clipping would run matters only when there is one
            model = {k: v for k, v in model.items() if k not in CLIP_KEYS}
        spec = {
            "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                        "augment": OmegaConf.to_container(self.dataset.augment)},
            "model": model,
            "normalization": ([list(self.dataset.mean), list(self.dataset.std)]
                              if model["normalize"] else None),
            "train": recipe,
            "seed": self.seed if seed is None else seed,
            "train_idx_sha256": index_digest(train_idx),
            "n_train": int(len(train_idx)),
            "code": TRAINING_CODE,
        }
        if population:
            spec["indices_into"] = "train+test"
        return spec

    def spec(self, ds: datasets.Dataset, train_idx: np.ndarray, *, seed: int | None = None,
             population: bool = False, extra_spec: dict | None = None) -> dict:
        """The cache spec of a model `train_or_load` trains: `model_spec`, `extra_spec` and, on a
        CPU, the intra-op thread count (a CPU's floating-point reductions depend on it)."""
        spec = {**self.model_spec(ds, np.sort(train_idx), seed=seed, population=population),
                **(extra_spec or {})}
        if self.device.type == "cpu":
            spec["cpu_threads"] = torch.get_num_threads()
        return spec

    def key(self, ds: datasets.Dataset, train_idx: np.ndarray, **spec) -> str:
        """The cache key of `spec(ds, train_idx, **spec)`."""
        return key_of(self.spec(ds, train_idx, **spec))

    def new_model(self, seed: int) -> torch.nn.Module:
        """The architecture initialized from `seed`, on the device, in the recipe's memory
        format."""
        torch.manual_seed(seed)
        model = build_model(self.model, self.dataset).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.recipe.channels_last else model

    def fit(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, desc: str,
            checkpoint: TrainCheckpoint | None = None, loss=None) -> torch.nn.Module:
        """Train `model` (from `new_model`) on images x (uint8, on its device) with the recipe and
        the dataset's augmentation, batches shuffled from `seed`; resumable with `checkpoint`;
        `loss` replaces the recipe's loss (see train_from_scratch)."""
        batches = Batches(x, y, batch_size=self.recipe.batch_size, shuffle=True, seed=seed,
                          augment=Augment(**self.dataset.augment),
                          channels_last=self.recipe.channels_last)
        return train_from_scratch(model, batches, self.recipe, desc=desc, checkpoint=checkpoint,
                                  loss=loss)

    def train_or_load(self, kind: str, ds: datasets.Dataset, train_idx: np.ndarray,
                      state: RunState, *, seed: int | None = None, population: bool = False,
                      desc: str | None = None, model: torch.nn.Module | None = None,
                      extra_spec: dict | None = None, loss=None) -> torch.nn.Module:
        """A model trained on `train_idx` with the recipe, via the cache. With `population`,
        train_idx indexes train + test (a reference model); `seed` replaces the run's. Its
        training saves checkpoints in the cache (every `checkpoint_every_s`), so a killed job's
        rerun resumes it. `model` (default: `new_model`), `extra_spec` (added to its cache key)
        and `loss` train something else, such as an ensemble, the same way."""
        train_idx = np.sort(train_idx)  # the key is order-free, so the training order must be too
        seed = self.seed if seed is None else seed
        model = self.new_model(seed) if model is None else model
        spec = self.spec(ds, train_idx, seed=seed, population=population, extra_spec=extra_spec)
        key = key_of(spec)
        cache = self.cache

        def write(directory: Path) -> None:
            idx = torch.as_tensor(train_idx, device=self.device)
            x, y = ds.population if population else (ds.train_x, ds.train_y)
            partial = cache.partial_dir(kind, key)
            checkpoint = (TrainCheckpoint(partial / "train.ckpt", self.checkpoint_every_s,
                                          tag=f"{kind}/{key}") if partial else None)
            self.fit(model, x[idx], y[idx], seed, desc=desc or kind, checkpoint=checkpoint,
                     loss=loss)
            check_finite(model, desc or kind)  # a diverged model is never cached
            save_model(directory, model)

        path, _, hit = cache.get_or_build(kind, spec, write)
        state.cache_keys[kind], state.cache_hits[kind] = key, hit
        return load_model(path, model) if hit else model.eval()


# The run-config forms of the Trainer's methods.
def model_spec(cfg: DictConfig, ds: datasets.Dataset, train_idx: np.ndarray, **kw) -> dict:
    return Trainer.of(cfg, None, torch.device("cpu")).model_spec(ds, train_idx, **kw)


def new_model(cfg: DictConfig, device: torch.device, seed: int) -> torch.nn.Module:
    return Trainer.of(cfg, None, device).new_model(seed)


def fit_new_model(cfg: DictConfig, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  seed: int, desc: str, checkpoint: TrainCheckpoint | None = None,
                  loss=None) -> torch.nn.Module:
    return Trainer.of(cfg, None, x.device).fit(model, x, y, seed, desc, checkpoint, loss)


def train_or_load(cfg: DictConfig, cache: Cache, kind: str, ds: datasets.Dataset,
                  train_idx: np.ndarray, device: torch.device, state: RunState,
                  **kw) -> torch.nn.Module:
    return Trainer.of(cfg, cache, device).train_or_load(kind, ds, train_idx, state, **kw)
