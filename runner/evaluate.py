"""Evaluation context, batched inference, accuracies and the Avg. Gap.

An evaluator is `evaluate(model, ctx, **params) -> dict[str, float]` and lists the names it
reports in `evaluate.metric_names`. Model outputs on each subset are computed once per model, in
large batches under `torch.inference_mode`, and shared by all evaluators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from data.loader import to_float
from data.splits import Split, forgets_class
from runner.typed import ConfigError, check_target


@torch.inference_mode()
def predict(model: torch.nn.Module, x_u8: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (float32, on x's device) of `model` on uint8 images."""
    model.eval()
    out = [model(to_float(x_u8[i:i + batch_size])).float() for i in range(0, len(x_u8), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class EvalContext:
    """What evaluators may look at: the data on the device, the split, the run's reference and
    shadow models, and outputs memoized per model (keyed by the model object itself)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    split: Split
    num_classes: int
    batch_size: int = 1024
    # For membership attacks on the population (train + test, in that order): the run's
    # runner.reference.References (its models are trained or loaded on first use, so a run
    # without such an evaluator trains none; it also caches the population logits of the
    # `model_keys` models: model -> its cache key) and runner.shadows.Shadows (U-LiRA's).
    refs: Any = None
    shadow_models: Any = None
    model_keys: dict = field(default_factory=dict)
    oracle: torch.nn.Module | None = None        # the run's retrain oracle
    population_x: torch.Tensor | None = None     # train + test images, if the caller has them
    role: str = ""               # the role of the model being evaluated (unlearned, retrain, ...)
    samples: Any = None          # runner.samples.Samples: per-sample columns, if the run keeps them
    _logits: dict = field(default_factory=dict, repr=False)
    _subsets: dict = field(default_factory=dict, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def reference(self):
        """The reference models' population outputs (runner.reference.ReferenceOutputs)."""
        return self.refs.outputs()

    def shadows(self, num_shadows: int):
        """U-LiRA's shadow outputs (runner.shadows.ShadowOutputs)."""
        return self.shadow_models.outputs(num_shadows)

    def memo(self, key, compute: Callable[[], Any]) -> Any:
        """compute() once per run and key: for values that do not depend on the evaluated model."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def population_logits(self, model: torch.nn.Module) -> np.ndarray:
        """float32 (P, C) logits of `model` on train + test; from the cache for cached models."""
        key = (model, "population")
        if key not in self._logits:
            def compute() -> np.ndarray:
                x = (self.population_x if self.population_x is not None else
                     self.memo("population_x", lambda: torch.cat([self.train_x, self.test_x])))
                return predict(model, x, self.batch_size).cpu().numpy()

            cache_key = self.model_keys.get(model)
            self._logits[key] = (self.refs.cached_logits(cache_key, compute)
                                 if cache_key is not None and self.refs is not None else compute())
        return self._logits[key]

    def subset(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of "forget", "retain" or "test", gathered once per run."""
        if name not in self._subsets:
            if name == "test":
                self._subsets[name] = (self.test_x, self.test_y)
            else:
                idx = self.split.forget_idx if name == "forget" else self.split.retain_idx
                idx = torch.as_tensor(idx, device=self.train_x.device)
                self._subsets[name] = (self.train_x[idx], self.train_y[idx])
        return self._subsets[name]

    def logits(self, model: torch.nn.Module, name: str) -> torch.Tensor:
        """Memoized logits of `model` on a subset (keyed by the model object)."""
        key = (model, name)
        if key not in self._logits:
            self._logits[key] = predict(model, self.subset(name)[0], self.batch_size)
        return self._logits[key]

    def labels(self, name: str) -> torch.Tensor:
        return self.subset(name)[1]

    def keep(self, name: str, where, values, dtype=np.float64) -> None:
        """Keep a per-sample score of the model being evaluated (runner.samples; `where`: a split
        name, "population", or row numbers: train index, or len(train) + test index)."""
        if self.samples is not None:
            self.samples.keep(self.role, name, where, values, dtype)

    def forget_model(self, model: torch.nn.Module) -> None:
        """Drop memoized outputs of `model` (call when it is done or about to change)."""
        self._logits = {k: v for k, v in self._logits.items() if k[0] is not model}


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in percent."""
    return float((logits.argmax(1) == y).float().mean().item() * 100.0) if len(y) else float("nan")


def accuracies(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
    """Accuracy (%) on D_F, D_R and the test set, and `forget_confidence`: the mean softmax
    probability (%) of the true label on D_F (how sure the model still is of what it should
    forget); for class forgetting also the test set split into the forgotten class
    (`test_forget_acc`) and the remaining classes (`test_retain_acc`)."""
    out = {f"{s}_acc": _acc(ctx.logits(model, s), ctx.labels(s)) for s in ("forget", "retain", "test")}
    forget_logits, forget_y = ctx.logits(model, "forget"), ctx.labels("forget")
    out["forget_confidence"] = float(torch.softmax(forget_logits.float(), 1)
                                     .gather(1, forget_y[:, None]).mean() * 100.0)
    if ctx.split.class_id is not None:  # a whole class forgotten
        test_logits, test_y = ctx.logits(model, "test"), ctx.labels("test")
        in_class = test_y == ctx.split.class_id
        out["test_forget_acc"] = _acc(test_logits[in_class], test_y[in_class])
        out["test_retain_acc"] = _acc(test_logits[~in_class], test_y[~in_class])
    return out


accuracies.metric_names = ("forget_acc", "retain_acc", "test_acc", "forget_confidence")
accuracies.class_metric_names = ("test_forget_acc", "test_retain_acc")


def avg_gap(method: dict[str, float], oracle: dict[str, float], names) -> float:
    """Mean over `names` of |method - oracle| (the AMUN paper's Avg. Gap, in the metrics' units)."""
    return float(np.mean([abs(method[n] - oracle[n]) for n in names]))


def check_evaluators(cfg: DictConfig) -> None:
    """Each evaluator's node against its function; shadows within the reference models; the gap
    metrics among those the evaluators report."""
    names: set[str] = set()
    for name, node in cfg.eval.evaluators.items():
        fn = check_target(node, f"eval.evaluators.{name}", 2)
        names |= set(getattr(fn, "metric_names", ()))
        if forgets_class(cfg.forget):
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
