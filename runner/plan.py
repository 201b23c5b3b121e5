"""What a run will train, build or load, named before any of it happens.

The pipeline computes the plan once the data is loaded and split (the cache keys need the data's
fingerprint and the forget indices), logs it in one line ("will train: original, 8 reference
models; will load: retrain") and records it in metrics.json, then executes it. Each item is a
cache artifact with its key, or a step of the run's own (the unlearning, the evaluations).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runner.saved import given_key

if TYPE_CHECKING:
    from data.splits import Split
    from runner.reference import References
    from runner.shadows import Shadows
    from runner.trained import Trainer

log = logging.getLogger("runner")


@dataclass
class Item:
    name: str               # "original", "retrain/2", "adversarial", "reference 3/8", ...
    kind: str               # its cache kind ("original", "reference", ...), or "run": the run's own
    action: str             # what the run does with it: train, build, load or run
    key: str | None = None  # the cache key; None when it depends on an earlier step's outcome
    group: str | None = None  # items counted together in the summary ("reference model")


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)

    def cached(self, name: str, kind: str, key: str | None, hit: bool, *, miss: str = "train",
               group: str | None = None) -> None:
        """A cache artifact: loaded if the cache has it, else trained (or `miss`: built). One
        that two steps use (a reference model that is also a shadow original) is listed once."""
        if not any(i.name == name and i.kind == kind for i in self.items):
            self.items.append(Item(name, kind, "load" if hit else miss, key, group))

    def own(self, name: str, group: str | None = None) -> None:
        """A step of the run itself, never cached."""
        self.items.append(Item(name, "run", "run", group=group))

    def summary(self) -> str:
        """One line: what will be trained, built, loaded and run; a group is counted."""
        parts = []
        for action in ("train", "build", "load", "run"):
            counts = Counter(i.group or i.name for i in self.items if i.action == action)
            if counts:
                parts.append(f"will {action}: " + ", ".join(
                    f"{n} {name}s" if n > 1 else name for name, n in counts.items()))
        return "; ".join(parts)

    def record(self) -> list[dict]:
        return [asdict(i) for i in self.items]

    def log(self) -> None:
        log.info("plan: %s", self.summary())


def make_plan(trainer: Trainer, ds, split: Split, chunks: list[np.ndarray], refs: References,
              shadows: Shadows, preparations: list, evaluators: list,
              given: str | None = None, given_unlearned: str | None = None,
              unlearned_key=None) -> Plan:
    """What `run` will train, build, load and run, in its order (runner.plan); `given`: the
    original's file, if the run is given one; `given_unlearned`: the file of the model it
    evaluates instead of running the method; `unlearned_key(start_key, chunk, retain_idx, k,
    prepared keys)`: the unlearned model's cache key, when it is cached (known before the run
    for the first request only: later ones start from the model the one before left)."""
    plan, cache = Plan(), trainer.cache
    plan.cached(f"dataset {ds.name}", "datasets", ds.fingerprint, True)
    if given is None:
        original = trainer.key(ds, np.arange(len(ds.train_y)))
        plan.cached("original", "original", original, cache.has("original", original))
    else:
        original = given_key(given)
        plan.cached(f"original ({given})", "given", original, True)
    for p in (p for p in preparations if p.once):
        key = p.key(original, split.forget_idx)
        plan.cached(p.field, p.kind, key, p.has(key), miss="build")
    start = 0
    for k, chunk in enumerate(chunks, 1):
        tag = "" if len(chunks) == 1 else f"/{k}"
        start += len(chunk)
        retain = np.setdiff1d(np.arange(len(ds.train_y)), split.forget_idx[:start])
        oracle = trainer.key(ds, retain)
        plan.cached("retrain" + tag, "retrain", oracle, cache.has("retrain", oracle))
        prepared = {}
        for p in preparations:
            # later requests: the model request k-1 left
            key = p.key(original, split.forget_idx if p.once else chunk) if k == 1 else None
            prepared[p.field] = key
            if not p.once:
                plan.cached(p.field + tag, p.kind, key, key is not None and p.has(key),
                            miss="build")
        if given_unlearned is None and unlearned_key is not None and k == 1:
            key = unlearned_key(original, chunk, retain, k, prepared)
            plan.cached("unlearn", "unlearned", key, cache.has("unlearned", key), miss="run")
        elif given_unlearned is None:
            plan.own("unlearn" + tag)
        else:
            plan.cached(f"unlearned ({given_unlearned})", "given", given_key(given_unlearned),
                        True)
        if k == 1:  # what the evaluators use (`evaluate.uses`) is made at their first run
            uses = [(use, e) for e in evaluators for use in getattr(e.func, "uses", ())]
            if any(use == "reference" for use, _ in uses):
                refs.plan(plan, range(refs.num_models), outputs=True)
            for e in (e for use, e in uses if use == "shadows"):
                shadows.plan(plan, e.keywords["num_shadows"])
        plan.own("evaluate" + tag)
    return plan
