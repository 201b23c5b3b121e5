"""What a sweep's jobs share beyond trained models: each model's evaluation and the unlearned model.

Every job of a sweep evaluates the original and the oracle, which are the same models for every
method of a seed, so two thirds of a 9-method sweep's evaluation work used to be repeated. Here
the evaluation of one model is a cache artifact (kind `evaluation`): its metrics and its
per-sample columns (runner.samples), keyed by

- the model's weights (`state_digest`: the original, the oracle, or an unlearned model; the
  `retrain` method's unlearned model is the oracle, so it hits the oracle's entry) and the
  configured architecture,
- the oracle's weights (MIA-NN picks its classes with the oracle),
- the evaluators' config, the dataset's fingerprint, the forget set, the inference batch size,
  whether per-sample columns are kept,
- the reference models' keys when an evaluator uses them, and the method, the seed and the
  dataset's config when an evaluator unlearns shadow models with the method (U-LiRA),
- `PROJECT_CODE`: every Python file of the runner's packages, so an edit to any of them is a miss,
  and the versions of torch, numpy and scikit-learn.

The unlearned model of a request is an artifact too (kind `unlearned`): an identical job (same
config, same code, same cache) loads it instead of unlearning again. Its key holds the model it
starts from, the oracle, the resolved method config, the request's forget set (in its order)
and D_R, the seed,
the dataset's augmentation, the recipe's precision and memory format, the device kind and CPU
thread count, what the method prepared (AMUN's D_A key) and `PROJECT_CODE`.

`cache.evaluations=false` / `cache.unlearned=false` run the old path (every job evaluates and
unlearns itself), which the benchmark uses as its baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import sklearn
import torch
from omegaconf import DictConfig, OmegaConf

from data.splits import index_digest, ordered_digest
from runner.cache import Cache, code_fingerprint, load_model, save_model, state_digest
from runner.samples import SPLITS

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("attacks", "data", "methods", "models", "runner")
# Taken at import, like TRAINING_CODE: it describes the code this process runs.
PROJECT_CODE = code_fingerprint(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
# The libraries whose numerics an evaluation or an unlearning depends on (sklearn: MIA-efficacy's
# and MIA-NN's SVCs).
VERSIONS = {"torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__}


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _uses(evaluators: list, what: str) -> bool:
    return any(what in getattr(e.func, "uses", ()) for e in evaluators)


def evaluation_base(cfg: DictConfig, ds, split, evaluators: list, refs, *, batch_size: int,
                    samples: bool, device: torch.device) -> dict:
    """The part of an evaluation's key that all roles of one request share (`evaluation_spec`)."""
    spec = {
        "what": "evaluation", "code": PROJECT_CODE, "model_config": _plain(cfg.model),
        "evaluators": _plain(cfg.eval.evaluators), "dataset": ds.fingerprint,
        # the forget set in its order: RMIA subsamples and U-LiRA's shadows follow it
        "split": {"kind": split.kind, "forget": ordered_digest(split.forget_idx),
                  "retain": split.digest("retain"), "class_id": split.class_id},
        "versions": VERSIONS,
        "batch_size": batch_size, "samples": bool(samples), "device": device.type,
    }
    if device.type == "cpu":
        spec["cpu_threads"] = torch.get_num_threads()
    if _uses(evaluators, "reference") or _uses(evaluators, "shadows"):
        spec["reference"] = [refs.key(m) for m in range(refs.num_models)]
    if _uses(evaluators, "shadows"):  # U-LiRA unlearns shadow models with the run's method
        spec["shadows"] = {"method": _plain(cfg.method), "seed": cfg.seed,
                           "dataset": _plain(cfg.dataset), "train": _plain(cfg.train)}
    return spec


def evaluate_cached(cache: Cache, base: dict, oracle_digest: str, model: torch.nn.Module,
                    role: str, samples, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """`compute()` (the evaluators on `model`, as `role`) once per key; (metrics, hit). Its
    per-sample columns (`samples.columns["<role>.*"]`, when `samples` is kept) are stored
    without the role, and put back under this run's role on a hit."""
    spec = {**base, "model": state_digest(model), "oracle": oracle_digest}
    prefix = role + "."

    def write(directory: Path) -> None:
        metrics = compute()
        (directory / "metrics.json").write_text(json.dumps(metrics))
        if samples is not None:
            np.savez(directory / "columns.npz", **{k[len(prefix):]: v for k, v in
                                                   samples.columns.items() if k.startswith(prefix)})

    path, _, hit = cache.get_or_build("evaluation", spec, write)
    metrics = json.loads((path / "metrics.json").read_text())
    if hit and samples is not None:
        with np.load(path / "columns.npz", allow_pickle=False) as f:
            for name in f.files:
                samples.columns[prefix + name] = f[name]
    return metrics, hit


def unlearned_spec(cfg: DictConfig, *, start_key: str, oracle_key: str, chunk: np.ndarray,
                   retain_idx: np.ndarray, seed: int, prepared: dict,
                   device: torch.device) -> dict:
    """What determines the model one unlearning request leaves (see the module docstring)."""
    spec = {"what": "unlearned", "code": PROJECT_CODE, "versions": VERSIONS, "start": start_key,
            "oracle": oracle_key, "method": _plain(cfg.method), "model_config": _plain(cfg.model),
            # in its order: the method's batches are drawn from positions in it
            "forget": ordered_digest(chunk), "n_forget": int(len(chunk)),
            "retain": index_digest(np.asarray(retain_idx)) if cfg.method.use_retain else None,
            "seed": seed, "augment": _plain(cfg.dataset.augment),
            "precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
            "prepared": prepared, "device": device.type}
    if device.type == "cpu":
        spec["cpu_threads"] = torch.get_num_threads()
    return spec


def unlearn_cached(cache: Cache, spec: dict, model: torch.nn.Module,
                   compute: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, str, bool]:
    """The unlearned model of `spec`: `compute()`d and stored, or loaded into `model` (a copy of
    the architecture); (model, key, hit)."""
    result = {}

    def write(directory: Path) -> None:
        result["model"] = compute()
        save_model(directory, result["model"])

    path, key, hit = cache.get_or_build("unlearned", spec, write)
    if "model" in result:
        return result["model"], key, hit
    return load_model(path, model), key, hit


def evaluate_models(ctx, evaluators: list, models: dict, cache: Cache | None = None,
                    reuse: dict | None = None, state=None) -> dict:
    """Every evaluator on every model (`models`: role -> model; `ctx`: runner.evaluate.EvalContext);
    with `cache`, each model's evaluation is looked up first (`reuse`: the key's shared part, from
    `evaluation_base`) and `state` (runner.trained.RunState) records the hits."""
    def compute(role: str, model: torch.nn.Module) -> dict:
        ctx.role = role
        out = {}
        for evaluate in evaluators:
            out.update(evaluate(model, ctx))
        if ctx.samples is not None:
            ctx.samples.keep_outputs(role, {s: ctx.logits(model, s) for s in SPLITS})
        ctx.forget_model(model)
        return out

    metrics = {}
    oracle = state_digest(models["retrain"]) if cache is not None else None
    for role, model in models.items():
        if cache is None:
            metrics[role] = compute(role, model)
            continue
        metrics[role], hit = evaluate_cached(cache, reuse, oracle, model, role, ctx.samples,
                                             lambda: compute(role, model))
        state.cache_hits[f"evaluation.{role}"] = hit
    return metrics
