"""Per-epoch training curves of every model a run trains or fine-tunes (`fit` records them).

`recording()` opens a recorder for one run; `fit` adds one point per epoch to it: the mean loss
of the epoch's steps and the accuracy of the model's predictions on the batches it trained on
(in train mode, before each step; an ascent batch counts too). A model is named by its `fit`
description ("original", "retrain", "reference 2/8", "ft"; a repeated one gets " #2", ...).
The run writes them to `curves.csv` (model, epoch, loss, accuracy) and the W&B logger charts them.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_current: ContextVar["Curves | None"] = ContextVar("curves", default=None)


class Curves:
    def __init__(self):
        self.points: dict[str, list[tuple[int, float, float]]] = {}

    def start(self, desc: str) -> str:
        """A new curve for one `fit` call: named `desc`, or `desc #k` for the k-th so named."""
        n = sum(1 for v in self.points if v == desc or v.startswith(f"{desc} #"))
        name = desc if n == 0 else f"{desc} #{n + 1}"
        self.points[name] = []
        return name

    def add(self, name: str, epoch: int, loss: float, accuracy: float) -> None:
        self.points[name].append((epoch, loss, accuracy))

    def rows(self) -> list[dict]:
        return [{"model": name, "epoch": e, "loss": loss, "accuracy": acc}
                for name, points in self.points.items() for e, loss, acc in points]

    def save(self, run_dir: Path) -> Path | None:
        """curves.csv in run_dir (none if nothing was trained)."""
        if not self.points:
            return None
        path = Path(run_dir) / "curves.csv"
        lines = ["model,epoch,loss,accuracy"]
        lines += [f'"{r["model"]}",{r["epoch"]},{r["loss"]:.6g},{r["accuracy"]:.4f}'
                  for r in self.rows()]
        path.write_text("\n".join(lines) + "\n")
        return path


@contextmanager
def recording():
    """A recorder for the training in this context (one run)."""
    curves = Curves()
    token = _current.set(curves)
    try:
        yield curves
    finally:
        _current.reset(token)


def current() -> Curves | None:
    return _current.get()
