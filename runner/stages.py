"""The kinds of run that `stage` selects. Each stage is its run function and what the runner needs
to present its result: the name a run is given, the lines printed at its end and the flat
scalars a logger records. Adding a stage is adding an entry to `STAGES`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from runner import ensemble
from runner.pipeline import run
from runner.reference import run_reference
from runner.results import ROLES, summary_rows
from runner.table import UNLEARN_TABLE, Table
from runner.typed import ConfigError


@dataclass(frozen=True)
class Stage:
    run: Callable[[DictConfig, Path], dict]
    what: Callable[[DictConfig], str]       # the run name's first part
    summary: Callable[[dict], list[str]]    # lines printed when the run ends
    scalars: Callable[[dict], dict]         # what a logger records, flat
    table: Table = UNLEARN_TABLE            # how runner.report puts its runs in a table


def _unlearn_summary(result: dict) -> list[str]:
    lines = [f"request {e['request']}: {e['n_forget']} forgotten, forget_acc "
             f"{e['metrics']['unlearned'].get('forget_acc', float('nan')):.2f}, avg_gap "
             f"{e['avg_gap']:.2f}" for e in result.get("requests", [])]
    lines.append(f"{result['name']} | avg_gap {result['avg_gap']:.2f} | cache hits "
                 f"{result['cache_hits']}")
    columns, rows = summary_rows(result)
    lines.append("  ".join(f"{c:>12}" for c in columns))
    lines += ["  ".join(f"{v:>12.2f}" if isinstance(v, float) else f"{v:>12}" for v in row)
              for row in rows]
    return lines


def flat_metrics(result: dict) -> dict:
    """role/metric -> value, and avg_gap, of one evaluation (a result or one of its requests)."""
    flat = {f"{role}/{k}": v for role in ROLES for k, v in result["metrics"].get(role, {}).items()}
    flat["avg_gap"] = result["avg_gap"]
    return flat


def _unlearn_scalars(result: dict) -> dict:
    flat = flat_metrics(result)
    flat.update({f"time/{k}": v for k, v in result["stage_seconds"].items()})
    adv = result.get("adversarial")
    if adv is not None:
        flat.update({f"adversarial/{k}": adv[k]
                     for k in ("model_calls_per_sample", "success_rate", "eps_init")
                     if isinstance(adv[k], (int, float))})
    return flat


def _reference_summary(result: dict) -> list[str]:
    ref = result["reference"]
    return [f"reference models {sorted(ref['keys'])}: {ref['trained']} trained in "
            f"{ref['train_seconds']:.1f} s, the rest from the cache"]


def _ensemble_summary(result: dict) -> list[str]:
    e = result["ensemble"]
    return [f"ensemble: members' accuracy {[round(a, 2) for a in e['member_acc']]}, ensemble "
            f"{e['ensemble_acc']:.2f}; robust accuracy {[round(a, 2) for a in e['member_robust_acc']]}"
            f", ensemble {e['ensemble_robust_acc']:.2f}; mean transferability rate "
            f"{e['transfer_rate_mean']:.2f} ({e['n_attacked']} attacked images)"]


def _ensemble_scalars(result: dict) -> dict:
    e = result["ensemble"]
    flat = {f"ensemble/{k}": v for k, v in e.items() if isinstance(v, (int, float))}
    for k in ("member_acc", "member_robust_acc"):
        flat.update({f"ensemble/{k}/{i}": v for i, v in enumerate(e[k])})
    flat.update({f"ensemble/transfer_rate/{pair}": v for pair, v in e["transfer_rate"].items()})
    return flat


STAGES = {
    "unlearn": Stage(run, lambda cfg: cfg.method.get("name", "?"), _unlearn_summary,
                     _unlearn_scalars),
    "reference": Stage(run_reference, lambda cfg: "reference", _reference_summary,
                       lambda r: {f"reference/{k}": r["reference"][k]
                                  for k in ("trained", "train_seconds")}),
    "ensemble": Stage(ensemble.run_ensemble, lambda cfg: "ensemble", _ensemble_summary,
                      _ensemble_scalars, ensemble.TABLE),
}


def stage_of(name: object) -> Stage:
    if name not in STAGES:
        names = list(STAGES)
        raise ConfigError(f"stage must be {', '.join(names[:-1])} or {names[-1]}, got {name!r}")
    return STAGES[name]
