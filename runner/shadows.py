"""U-LiRA's shadow models: reference model s as the shadow original, unlearned with the method under
test and retrained without its share of the forget set (see `attacks.lira` for the protocol). With
class forgetting, the shadow's retain set also leaves out the class's test images that its
population half holds: the shadow forgets the whole class, as the target does.

The shadow originals are the RMIA reference models and the shadow retrains are cache artifacts
(kind `shadow`, keyed like any model by their training indices and seed), so runs of different
methods on the same forget set share both; only the unlearning of each shadow is the run's own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from attacks.signals import lira_phi
from data import datasets
from runner.plan import Plan
from runner.evaluate import predict
from runner.reference import References
from runner.trained import RunState, Trainer

log = logging.getLogger("runner")

# (shadow original, its cache key, forget idx, retain idx, shadow retrain) -> unlearned shadow;
# indices are into train + test.
UnlearnShadow = Callable[[torch.nn.Module, str, np.ndarray, np.ndarray, torch.nn.Module],
                         torch.nn.Module]


@dataclass
class ShadowOutputs:
    phi_unlearned: np.ndarray   # (S, n_forget): phi of each unlearned shadow on the run's D_F
    phi_retrained: np.ndarray   # (S, n_forget): the same for each retrained shadow
    mask: np.ndarray            # (S, n_forget) bool: the sample was in shadow s's forget set


class Shadows:
    def __init__(self, trainer: Trainer, ds: datasets.Dataset, refs: References,
                 forget_idx: np.ndarray, unlearn_shadow: UnlearnShadow, *,
                 class_id: int | None, batch_size: int):
        """`trainer` trains the shadow retrains; `batch_size`: of inference."""
        self.trainer, self.cache, self.ds, self.refs = trainer, trainer.cache, ds, refs
        self.device, self.batch_size = trainer.device, batch_size
        self.class_id = class_id
        self.forget_idx, self.unlearn_shadow = np.asarray(forget_idx), unlearn_shadow
        self.stats = {"num_shadows": 0, "retrains_trained": 0, "retrain_seconds": 0.0,
                      "unlearn_seconds": 0.0}
        self._outputs: dict[int, ShadowOutputs] = {}

    def indices(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Shadow s's forget and retain sets (indices into train + test)."""
        inside = self.refs.keep[s]
        # Training samples come first in the population, so train indices are population ones.
        forget_s = self.forget_idx[inside[self.forget_idx]]
        retain_s = np.setdiff1d(np.flatnonzero(inside), forget_s)
        if self.class_id is not None:
            # Class forgetting: the shadow forgets the class, so its test images go too.
            labels = self.ds.population[1][torch.as_tensor(retain_s, device=self.device)]
            retain_s = retain_s[(labels != self.class_id).cpu().numpy()]
        return forget_s, retain_s

    def retrain_key(self, s: int) -> str:
        return self.trainer.key(self.ds, self.indices(s)[1], seed=s, population=True)

    def plan(self, plan: Plan, num_shadows: int) -> None:
        """Add the shadows to the plan: each original (a reference model), retrain and the
        unlearning of it."""
        self.refs.plan(plan, range(num_shadows), outputs=False)
        for s in range(num_shadows):
            if self.refs.keep[s][self.forget_idx].any():
                key = self.retrain_key(s)
                plan.cached(f"shadow retrain {s + 1}/{num_shadows}", "shadow", key,
                            self.cache.has("shadow", key), group="shadow retrain")
                plan.own(f"unlearn shadow {s + 1}/{num_shadows}", group="unlearned shadow")

    def outputs(self, num_shadows: int) -> ShadowOutputs:
        if num_shadows > self.refs.num_models:
            raise ValueError(f"{num_shadows} shadow models asked for, but only "
                             f"reference.num_models={self.refs.num_models} exist")
        if num_shadows not in self._outputs:
            self._outputs[num_shadows] = self._build(num_shadows)
        return self._outputs[num_shadows]

    def _build(self, num_shadows: int) -> ShadowOutputs:
        idx = torch.as_tensor(self.forget_idx, device=self.device)
        forget_x, forget_y = self.ds.train_x[idx], self.ds.train_y[idx]
        n = len(self.forget_idx)
        phi_u, phi_r = np.zeros((num_shadows, n)), np.zeros((num_shadows, n))
        mask = np.zeros((num_shadows, n), dtype=bool)
        for s in range(num_shadows):
            mask[s] = self.refs.keep[s][self.forget_idx]
            if not mask[s].any():
                continue
            forget_s, retain_s = self.indices(s)
            original_s, key_s = self.refs.model(s)
            state, start = RunState(), time.perf_counter()
            retrained = self.trainer.train_or_load("shadow", self.ds, retain_s, state, seed=s,
                                                   population=True,
                                                   desc=f"shadow retrain {s + 1}/{num_shadows}")
            if not state.cache_hits["shadow"]:
                self.stats["retrains_trained"] += 1
                self.stats["retrain_seconds"] += round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            unlearned = self.unlearn_shadow(original_s, key_s, forget_s, retain_s, retrained)
            self.stats["unlearn_seconds"] += round(time.perf_counter() - start, 3)
            for phi, model in ((phi_u, unlearned), (phi_r, retrained)):
                phi[s] = lira_phi(predict(model, forget_x, self.batch_size), forget_y)
            log.info("shadow %d/%d: %d of the forget samples to forget", s + 1, num_shadows,
                     len(forget_s))
        self.stats["num_shadows"] = max(self.stats["num_shadows"], num_shadows)
        return ShadowOutputs(phi_u, phi_r, mask)

    @property
    def used(self) -> bool:
        return bool(self._outputs)
