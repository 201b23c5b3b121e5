"""How the runs of a stage become rows of `runner.report`'s table: each stage (runner.stages)
carries a `Table`, so the report names no stage, method or forget kind.

`UNLEARN_TABLE`, the table of unlearning runs: a row per dataset, forget spec and method (a run
without D_R is marked so), cells from the unlearned model's metrics and the run's avg_gap; and an
`original` row, the model before unlearning, seen from the runs that evaluated it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable

import numpy as np

from data.splits import describe

COLUMNS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy", "avg_gap")


def _no_rows(results: list[dict]) -> list[dict]:
    return []


@dataclass(frozen=True)
class Table:
    """`row(config)`: (dataset, group, row name), the row a run's resolved config goes to;
    `value(result, column)`: its cell value; `columns`: the default columns; `headers`: the
    names of the first two; `derived(results)`: results of extra rows seen in the runs;
    `regime`: whether the report summarizes the sweep's original and oracle below the table."""

    row: Callable[[dict], tuple[str, str, str]]
    value: Callable[[dict, str], float]
    columns: tuple[str, ...]
    headers: tuple[str, str] = ("dataset", "forget")
    derived: Callable[[list[dict]], list[dict]] = field(default=_no_rows)
    regime: bool = True


def unlearn_row(cfg: dict) -> tuple[str, str, str]:
    method = cfg.get("method", {}).get("name", "?")
    if cfg.get("method", {}).get("use_retain") is False:
        method += " (no D_R)"
    given = (cfg.get("unlearned") or {}).get("checkpoint")
    if given is not None:  # a model given to evaluate, not the method's
        method = f"given {PurePath(given).name}"
    return cfg.get("dataset", {}).get("name", "?"), describe(cfg.get("forget", {})), method


def unlearn_value(r: dict, column: str) -> float:
    if column == "avg_gap":
        return r["avg_gap"]
    if column not in r["metrics"]["unlearned"]:
        raise SystemExit(f"{column!r} is not a metric of {r.get('run_dir', 'a run')}; it has "
                         f"{sorted(r['metrics']['unlearned'])}")
    return r["metrics"]["unlearned"][column]


def original_views(results: list[dict]) -> list[dict]:
    """Each finished run seen as a row for the original model (before unlearning) of its seed:
    its metrics, and its avg_gap to the oracle over the run's gap metrics. The report keeps the
    first view of each seed, and the retrain runs come first: U-LiRA scores even the original
    with shadows unlearned by the run's method, so only the oracle's run gives a method-free
    row (without one, the first job of the seed gives it)."""
    views = []
    oracle_first = sorted(results, key=lambda r: r.get("config", {}).get("method", {}).get("name")
                          != "retrain")
    for r in oracle_first:
        if r.get("status") != "ok" or "gap_metrics" not in r:
            continue
        metrics = r["metrics"]
        gap = float(np.mean([abs(metrics["original"][n] - metrics["retrain"][n])
                             for n in r["gap_metrics"]]))
        config = {**r["config"], "method": {"name": "original"}, "unlearned": {"checkpoint": None}}
        views.append({**{k: v for k, v in r.items() if k != "requests"},  # the run's, not its
                      "config": config, "avg_gap": gap,
                      "metrics": {"unlearned": metrics["original"]}})
    return views


UNLEARN_TABLE = Table(unlearn_row, unlearn_value, COLUMNS, derived=original_views)
