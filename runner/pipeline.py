"""The stages of one run: data -> split -> original -> retrain oracle -> method -> evaluators.

The original and the oracle come from the content-addressed cache, so a sweep of unlearning runs
trains them once. Every evaluator runs on the unlearned model, the oracle and the original, in the
same run, and Avg. Gap compares the first two.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data import datasets
from data.loader import Augment, Batches
from data.splits import Split, index_digest, make_split
from methods.common import UnlearnData
from runner import adversarial
from runner.cache import Cache, code_fingerprint, load_model, save_model, state_digest
from runner.config import ConfigError, build_model, instantiate_partial
from runner.evaluate import EvalContext, avg_gap
from runner.train import fit, make_scheduler, sgd

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available")
    return device


def load_dataset(cfg: DictConfig) -> datasets.Dataset:
    """Load the dataset and check it against what its config promised."""
    d = cfg.dataset
    ds = datasets.load(d.name, root=d.root, source=d.source, download=d.download,
                       cache_dir=cfg.paths.cache_dir, **OmegaConf.to_container(d.options))
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
REPO = Path(__file__).resolve().parent.parent
TRAINING_CODE = code_fingerprint([*sorted((REPO / "models").glob("*.py")),
                                  REPO / "runner" / "train.py", REPO / "data" / "loader.py"])


def model_spec(cfg: DictConfig, ds: datasets.Dataset, train_idx: np.ndarray) -> dict:
    """Exactly what determines a model trained from scratch: the cache key's content."""
    recipe = OmegaConf.to_container(cfg.train, resolve=True)
    schedule = recipe.pop("schedule")
    recipe["schedule"] = (schedule if schedule["name"] == "step" else {"name": schedule["name"]})
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                    "augment": OmegaConf.to_container(cfg.dataset.augment)},
        "model": model,
        "normalization": ([list(cfg.dataset.mean), list(cfg.dataset.std)]
                          if model["normalize"] else None),
        "train": recipe,
        "seed": cfg.seed,
        "train_idx_sha256": index_digest(train_idx),
        "n_train": int(len(train_idx)),
        "code": TRAINING_CODE,
    }


def train_or_load(cfg: DictConfig, cache: Cache, kind: str, ds: datasets.Dataset,
                  train_idx: np.ndarray, device: torch.device, state: RunState) -> torch.nn.Module:
    """A model trained from scratch on `train_idx` with the run's recipe, via the cache."""
    train_idx = np.sort(train_idx)  # the key is order-free, so the training order must be too
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.dataset).to(device)
    recipe = cfg.train
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def write(directory: Path) -> None:
        idx = torch.as_tensor(train_idx, device=device)
        batches = Batches(ds.train_x[idx], ds.train_y[idx], batch_size=recipe.batch_size,
                          shuffle=True, seed=cfg.seed, augment=Augment(**cfg.dataset.augment),
                          channels_last=recipe.channels_last)
        opt = sgd(model, lr=recipe.lr, momentum=recipe.momentum,
                  weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        sched = make_scheduler(opt, epochs=recipe.epochs, **recipe.schedule)
        fit(model, batches, epochs=recipe.epochs, optimizer=opt, scheduler=sched,
            precision=recipe.precision, desc=kind)
        save_model(directory, model)

    path, key, hit = cache.get_or_build(kind, model_spec(cfg, ds, train_idx), write)
    state.cache_keys[kind], state.cache_hits[kind] = key, hit
    return load_model(path, model) if hit else model.eval()


def request_chunks(forget_idx: np.ndarray, requests: int) -> list[np.ndarray]:
    """The forget set as `requests` consecutive unlearning requests (sizes differ by at most one),
    in the sampler's order: request k forgets chunk k."""
    if not 1 <= requests <= len(forget_idx):
        raise ConfigError(f"requests={requests}: the forget set has {len(forget_idx)} samples; "
                          "each request needs at least one")
    return np.array_split(np.asarray(forget_idx), requests)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run every stage and return the result that metrics.json and the logger record.

    With `requests=k > 1` the forget set arrives as k consecutive requests. Request j unlearns
    chunk j from the model that request j-1 left, with D_R = the training set minus chunks 1..j
    (samples forgotten earlier are gone for good). After each request the evaluators run on that
    model, on the oracle retrained without chunks 1..j, and on the original, with the forget set =
    chunks 1..j. An AMUN run takes D_A from the original model's adversarial set
    (`adversarial_from: original`) or rebuilds it for the chunk on the current model (`current`,
    AMUN-A). The top-level metrics are those after the last request."""
    state = RunState()
    device = resolve_device(cfg.device)
    cache = Cache(cfg.paths.cache_dir)
    with state.stage("data"):
        ds = load_dataset(cfg)
        split = make_split(cfg.forget, ds.train_y.numpy(), ds.num_classes)
        chunks = request_chunks(split.forget_idx, cfg.requests)
        np.save(run_dir / "forget_idx.npy", split.forget_idx)
        ds = ds.to(device)
    with state.stage("original"):
        original = train_or_load(cfg, cache, "original", ds, np.arange(len(ds.train_y)), device, state)

    unlearn = instantiate_partial(cfg.method, "method", n_positional=2)
    evaluators = [instantiate_partial(node, f"eval.evaluators.{name}", n_positional=2)
                  for name, node in cfg.eval.evaluators.items()]
    adversarial_sets = []
    if getattr(unlearn.func, "needs_adversarial", False) and cfg.method.adversarial_from == "original":
        with state.stage("adversarial"):
            idx = torch.as_tensor(split.forget_idx, device=device)
            full = adversarial.build(cfg.method.attack, cache, original, state.cache_keys["original"],
                                     ds.train_x[idx], ds.train_y[idx], split.forget_idx)
            adversarial_sets.append(full)
    model, reports, start = original, [], 0
    for k, chunk in enumerate(chunks, 1):
        tag = "" if len(chunks) == 1 else f"/{k}"
        forgotten = split.forget_idx[:start + len(chunk)]
        sub = Split(split.kind, forgotten, np.setdiff1d(np.arange(len(ds.train_y)), forgotten),
                    split.class_id)
        with state.stage("retrain" + tag):
            oracle = train_or_load(cfg, cache, "retrain", ds, sub.retain_idx, device, state)
        data = _unlearn_data(cfg, ds, chunk, sub.retain_idx, oracle, device)
        if getattr(unlearn.func, "needs_adversarial", False):
            if cfg.method.adversarial_from == "original":
                data.adversarial = full.take(slice(start, start + len(chunk)))
            else:
                with state.stage("adversarial" + tag):
                    key = state.cache_keys["original"] if k == 1 else state_digest(model)
                    adv = adversarial.build(cfg.method.attack, cache, model, key,
                                            data.forget_x, data.forget_y, chunk)
                adversarial_sets.append(adv)
                data.adversarial = adv.take()
        with state.stage("unlearn" + tag):
            torch.manual_seed(cfg.seed + k - 1)
            model = unlearn(copy.deepcopy(model), data).eval()
        with state.stage("evaluate" + tag):
            metrics = _evaluate(cfg, ds, sub, evaluators,
                                {"unlearned": model, "retrain": oracle, "original": original})
        reports.append({"request": k, "n_request": int(len(chunk)), "n_forget": int(len(forgotten)),
                        "n_retain": int(len(sub.retain_idx)), "forget_idx_sha256": sub.digest("forget"),
                        "retrain_key": state.cache_keys["retrain"], "metrics": metrics,
                        "avg_gap": avg_gap(metrics["unlearned"], metrics["retrain"],
                                           cfg.eval.gap_metrics)})
        if len(chunks) > 1:
            log.info("request %d/%d: %d samples forgotten so far, avg_gap %.2f", k, len(chunks),
                     len(forgotten), reports[-1]["avg_gap"])
        start += len(chunk)

    extra = {}
    if adversarial_sets:
        extra["adversarial"] = adversarial.summarize(adversarial_sets)
        state.cache_keys["adversarial"] = extra["adversarial"]["cache_key"]
        state.cache_hits["adversarial"] = all(s.hit for s in adversarial_sets)
        adversarial.plot_eps_histogram(extra["adversarial"], run_dir / "adversarial_eps.png")
    if len(chunks) > 1:
        extra["requests"] = reports
    last = reports[-1]
    return {
        "method": cfg.method.name, "use_retain": cfg.method.use_retain, "dataset": cfg.dataset.name,
        "seed": cfg.seed, "forget": OmegaConf.to_container(cfg.forget),
        "n_forget": last["n_forget"], "n_retain": last["n_retain"],
        "forget_idx_sha256": last["forget_idx_sha256"],
        "metrics": last["metrics"], "avg_gap": last["avg_gap"],
        "gap_metrics": list(cfg.eval.gap_metrics),
        "cache_keys": state.cache_keys, "cache_hits": state.cache_hits,
        "stage_seconds": state.stage_seconds, "device": str(device), **extra,
    }


def _unlearn_data(cfg: DictConfig, ds: datasets.Dataset, forget_idx: np.ndarray,
                  retain_idx: np.ndarray, oracle: torch.nn.Module, device) -> UnlearnData:
    """What the method is given for one request: its forget set, and D_R when it may see it."""
    use_retain = cfg.method.use_retain
    f = torch.as_tensor(forget_idx, device=device)
    r = torch.as_tensor(retain_idx, device=device)
    return UnlearnData(
        forget_x=ds.train_x[f], forget_y=ds.train_y[f],
        retain_x=ds.train_x[r] if use_retain else None,
        retain_y=ds.train_y[r] if use_retain else None,
        num_classes=ds.num_classes, augment=Augment(**cfg.dataset.augment), seed=cfg.seed,
        precision=cfg.train.precision, channels_last=cfg.train.channels_last,
        # Only a method with D_R may have the model trained on D_R (retrain returns it).
        train_from_scratch=(lambda: copy.deepcopy(oracle)) if use_retain else None,
        forget_idx=np.asarray(forget_idx), retain_idx=np.asarray(retain_idx) if use_retain else None)


def _evaluate(cfg: DictConfig, ds: datasets.Dataset, split: Split, evaluators: list,
              models: dict) -> dict:
    """Every evaluator on every model, on one split."""
    ctx = EvalContext(ds.train_x, ds.train_y, ds.test_x, ds.test_y, split, ds.num_classes,
                      batch_size=cfg.eval_batch_size)
    metrics = {}
    for role, model in models.items():
        metrics[role] = {}
        for evaluate in evaluators:
            metrics[role].update(evaluate(model, ctx))
        ctx.forget_model(model)
    return metrics
