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
