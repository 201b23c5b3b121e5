"""`python -m runner.report DIR`: one table from every metrics.json under DIR (a sweep dir).
A sweep of one stage with a table of its own (runner.table; stage=ensemble: ensemble accuracy,
robustness, transfer) gets that table.

Rows are methods (per dataset and forget spec); cells are the unlearned model's metrics as
mean ± sample std (ddof=1) over the runs whose resolved configs differ only in seeds (`seed`,
`forget.seed`) or in settings that cannot change a result (paths, logger, device, batch size of
evaluation). Runs that differ in anything else (a learning rate of a sweep, say) get rows of their
own, labelled with the differing settings. Runs that did not finish are never silently dropped:
the `runs` column says ok/total and how many failed, were preempted, or are unfinished (killed
without a word, or still running); a cell with no finished run says which; a run repeating
another's config and seeds is flagged `dup`. Below the table, each such run is listed with its
error, and so is every job of a Hydra sweep under DIR (its multirun.yaml) that never started.
Writes DIR/table.md (the markdown table, cells "mean ± std") and DIR/table.csv (the same numbers
tidy, for pandas: one line per row and metric with mean, std, n and runs; see `tidy`), the
pictures `sweep_figures` draws (avg_gap.png; requests.png), and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from runner import figures
from runner.results import METRICS_FILE
from runner.table import COLUMNS, UNLEARN_TABLE, Table

def load_results(root: Path) -> list[dict]:
    results = []
    for path in sorted(root.rglob(METRICS_FILE)):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            results.append({"status": "failed", "error": f"unreadable {path}: {err}"})
    return results


# Config keys (and prefixes) that do not define a table cell.
NOT_SETTINGS = ("seed", "forget.seed", "paths.", "logger.", "device", "eval_batch_size",
                "checkpoint.")


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value)
    return out


def setting_of(r: dict) -> dict[str, str]:
    """The run's resolved config, flattened, without seeds and result-neutral keys."""
    return {k: v for k, v in _flat(r.get("config", {})).items()
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NOT_SETTINGS)}


def table_of(r: dict) -> Table:
    """The table the stage of a run's config (runner.stages) puts it in."""
    from runner.stages import STAGES  # here: runner.stages imports the pipeline and torch
    # A failed run may carry a config with an unknown stage: it still gets its (failed) row.
    return STAGES.get(r.get("config", {}).get("stage"), STAGES["unlearn"]).table


def _row_key(r: dict) -> tuple[str, str, str]:
    return table_of(r).row(r.get("config", {}))


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _labels(groups: dict[tuple, list[dict]]) -> dict[tuple, tuple[str, str, str]]:
    """Row labels: the method, plus the settings in which groups of the same method differ."""
    by_row: dict[tuple, list[tuple]] = defaultdict(list)
    for key in groups:
        by_row[key[:3]].append(key)
    labels = {}
    for row, keys in by_row.items():
        settings = [dict(key[3]) for key in keys]
        varying = sorted({k for s in settings for k in s
                          if len({s.get(k) for s in settings}) > 1})
        for key, setting in zip(keys, settings):
            extra = " ".join(f"{k}={setting.get(k, 'unset')}" for k in varying)
            labels[key] = (row[0], row[1], f"{row[2]} {extra}".strip())
    return labels


def status_of(r: dict) -> str:
    """ok, failed, preempted, or unfinished (a job killed outright leaves `running`)."""
    status = r.get("status")
    return status if status in ("ok", "failed", "preempted") else "unfinished"


def _runs_cell(runs: list[dict]) -> str:
    ok = [r for r in runs if r.get("status") == "ok"]
    seeds = [_seeds(r) for r in ok]
    dups = len(seeds) - len(set(seeds))
    notes = [f"{n} {s}" for s, n in sorted(Counter(status_of(r) for r in runs).items())
             if s != "ok"]
    notes += [f"{dups} dup"] if dups else []
    return f"{len(ok)}/{len(runs)}" + (f" ({', '.join(notes)})" if notes else "")


def not_finished(results: list[dict]) -> list[str]:
    """One line per run without a result: its status, dir and error."""
    lines = []
    for r in results:
        if r.get("status") != "ok":
            error = str(r.get("error", "no error recorded")).splitlines()[0][:300]
            lines.append(f"{status_of(r)}: {r.get('run_dir', '?')}: {error}")
    return lines


def never_started(root: Path) -> list[str]:
    """The jobs of the Hydra sweeps under root (each sweep dir's multirun.yaml, basic sweeper)
    that left no job dir at all (a cancelled array task, a node that died before Python started),
    as their overrides. A later sweep into the same dir replaces multirun.yaml: only its jobs are
    checked."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    missing = []
    for record in sorted(root.rglob("multirun.yaml")):
        try:
            hydra = OmegaConf.to_container(OmegaConf.load(record).hydra, resolve=False)
            sweeper = hydra["sweeper"]
            if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
                continue
            params = sweeper.get("params") or {}
            args = [f"{k}={v}" for k, v in params.items()] + list(hydra["overrides"]["task"])
            parsed = OverridesParser.create().parse_overrides(args)
            jobs = [tuple(sorted(job)) for batch in BasicSweeper.split_arguments(parsed, None)
                    for job in batch]
            started = {tuple(sorted(OmegaConf.to_container(OmegaConf.load(p), resolve=False)))
                       for p in record.parent.rglob(".hydra/overrides.yaml")}
        except Exception as err:  # noqa: BLE001 - e.g. a glob() sweep needs Hydra's config loader
            missing.append(f"(could not expand the sweep of {record}: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})")
            continue
        missing += [" ".join(job) for job in jobs if job not in started]
    return missing


def _natural(path: str) -> list:
    """A sort key in which job dir `2_...` comes before `10_...`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _seeds(r: dict) -> tuple:
    return r["config"].get("seed"), r["config"].get("forget", {}).get("seed")


def cells(results: list[dict]) -> list[tuple[tuple[str, str, str], list[dict]]]:
    """The table's rows as (label, runs), in display order: one per (dataset, forget spec,
    method, other settings), plus the rows each stage's table derives from its runs (the
    `original` row, one run per seed). Within a dataset and forget spec, rows come in the order
    of the sweep's jobs (the derived first)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    derived: dict[tuple, dict] = {}
    results = sorted(results, key=lambda r: _natural(str(r.get("run_dir", ""))))  # job order
    for table in dict.fromkeys(table_of(r) for r in results):
        for view in table.derived([r for r in results if table_of(r) is table]):
            key = (*_row_key(view), tuple(sorted(setting_of(view).items())))
            derived.setdefault((key, _seeds(view)), view)
    for (key, _), view in derived.items():
        groups[key].append(view)
    rank = {key: -1 for key, _ in derived}
    for r in results:
        key = (*_row_key(r), tuple(sorted(setting_of(r).items())))
        groups[key].append(r)
        rank.setdefault(key, len(rank))
    labels = _labels(groups)
    order = sorted(groups, key=lambda k: (*labels[k][:2], rank[k], labels[k][2]))
    return [(labels[key], groups[key]) for key in order]


def _values(runs: list[dict], column: str) -> list[float]:
    """The column's value in each finished run."""
    ok = [r for r in runs if r.get("status") == "ok"]
    return [table_of(r).value(r, column) for r in ok]


def make_table(results: list[dict], columns=COLUMNS) -> list[list[str]]:
    """Header row then one row of strings per cell row (`cells`): "mean ± std" over its runs."""
    rows = [["dataset", "forget", "method", *columns, "runs"]]
    for label, runs in cells(results):
        if any(r.get("status") == "ok" for r in runs):
            row = [_cell(_values(runs, c)) for c in columns]
        else:  # says why there is no number
            row = ["/".join(sorted({status_of(r) for r in runs}))] * len(columns)
        rows.append([*label, *row, _runs_cell(runs)])
    return rows


def tidy(results: list[dict], columns=COLUMNS, headers=("dataset", "forget")) -> pd.DataFrame:
    """The table as numbers: one row per cell row and metric, with the mean, the sample std
    (ddof=1; NaN for one run) and n, the finished runs it averages; `runs`, every run of the
    row (failed and unfinished included). A row without a finished run has NaN mean and n 0."""
    records = []
    for label, runs in cells(results):
        for column in columns:
            values = np.asarray(_values(runs, column), dtype=float)
            records.append({headers[0]: label[0], headers[1]: label[1], "method": label[2],
                            "metric": column,
                            "mean": values.mean() if len(values) else np.nan,
                            "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                            "n": len(values), "runs": len(runs)})
    return pd.DataFrame.from_records(
        records, columns=[*headers, "method", "metric", "mean", "std", "n", "runs"])


def regime(results: list[dict]) -> list[str]:
    """What the regime of a sweep is like, per dataset and forget spec, from its finished runs:
    the original's accuracy on D_R, D_F and the test set and its forget-minus-test gap, the oracle's
    forget and test accuracy (and RMIA FT AUC, with eval=rmia), and the seconds it took to train
    an original or an oracle (runs that trained it, not cache hits). Mean ± std over seeds."""
    by_cell: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    for r in results:
        if r.get("status") != "ok" or "metrics" not in r or "original" not in r["metrics"]:
            continue
        seeds = _seeds(r)
        by_cell[_row_key(r)[:2]].setdefault(seeds, r)  # one run per seed: the models are shared
    seconds: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        for stage in ("original", "retrain"):
            if r.get("cache_hits", {}).get(stage) is False and stage in r.get("stage_seconds", {}):
                seconds[_row_key(r)[:2]].append(r["stage_seconds"][stage])
    lines = []
    for cell, runs in sorted(by_cell.items()):
        o = [r["metrics"]["original"] for r in runs.values()]
        t = [r["metrics"]["retrain"] for r in runs.values()]
        parts = [f"original: retain {_cell([m['retain_acc'] for m in o])}, "
                 f"forget {_cell([m['forget_acc'] for m in o])}, "
                 f"test {_cell([m['test_acc'] for m in o])}, "
                 f"forget - test {_cell([m['forget_acc'] - m['test_acc'] for m in o])}",
                 f"oracle: forget {_cell([m['forget_acc'] for m in t])}, "
                 f"test {_cell([m['test_acc'] for m in t])}, "
                 f"forget - test {_cell([m['forget_acc'] - m['test_acc'] for m in t])}"]
        if all("rmia_ft_auc" in m for m in t):
            parts[-1] += f", RMIA FT AUC {_cell([m['rmia_ft_auc'] for m in t])}"
        if seconds[cell]:
            parts.append(f"{_cell(seconds[cell])} s to train a model "
                         f"({len(seconds[cell])} trained)")
        lines.append(f"- {cell[0]}, forget {cell[1]}, {len(runs)} seed(s): " + "; ".join(parts))
    return lines


def sweep_figures(results: list[dict], out: Path) -> list[Path]:
    """avg_gap.png (per row: mean Avg. Gap, sample-std error bars) and, when the runs made
    sequential requests, requests.png (each gap metric and the Avg. Gap after each request,
    mean over a row's runs); see runner.figures."""
    rows = [(label, _values(runs, "avg_gap")) for label, runs in cells(results)]
    rows = [(label, v) for label, v in rows if v]
    if not rows:
        return []
    several = len({label[:2] for label, _ in rows}) > 1
    bars = [(f"{m} ({d}, {f})" if several else m, v) for (d, f, m), v in rows]
    title = "" if several else f"{rows[0][0][0]}, forget {rows[0][0][1]}"
    made = [figures.avg_gap_figure(bars, out / "avg_gap.png", title)]
    series: dict[str, dict[str, list]] = defaultdict(dict)
    for (d, f, m), runs in cells(results):
        ok = [r for r in runs if r.get("status") == "ok" and "requests" in r]
        if not ok:
            continue
        label = f"{m} ({d}, {f})" if several else m
        for name in [*ok[0]["gap_metrics"], "avg_gap"]:
            points = defaultdict(list)
            for r in ok:
                for e in r["requests"]:
                    points[e["request"]].append(e["avg_gap"] if name == "avg_gap" else
                                                e["metrics"]["unlearned"][name])
            series[name][label] = [(k, float(np.mean(v))) for k, v in points.items()]
    if series:
        made.append(figures.requests_figure(dict(series), out / "requests.png"))
    return made


def to_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where table.md/csv go (default: sweep_dir)")
    parser.add_argument("--columns", default=None,
                        help="comma-separated metrics of the unlearned model, and avg_gap "
                             f"(default: {','.join(COLUMNS)}; for a sweep of one stage with a "
                             "table of its own, such as stage=ensemble, that table's)")
    args = parser.parse_args(argv)
    results = load_results(args.sweep_dir)
    if not results:
        print(f"no {METRICS_FILE} under {args.sweep_dir}", file=sys.stderr)
        return 1
    tables = set(map(table_of, results))
    table = tables.pop() if len(tables) == 1 else UNLEARN_TABLE
    columns = table.columns if args.columns is None else tuple(args.columns.split(","))
    rows = make_table(results, columns=columns)
    rows[0][:2] = table.headers
    problems = [f"- {line}" for line in not_finished(results)]
    problems += [f"- never started: {job}" for job in never_started(args.sweep_dir)]
    markdown = to_markdown(rows)
    regime_lines = regime(results) if table.regime else []
    if regime_lines:
        markdown += "\nThe regime (accuracies in %):\n\n" + "\n".join(regime_lines) + "\n"
    if problems:
        markdown += "\nRuns without a result:\n\n" + "\n".join(problems) + "\n"
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    tidy(results, columns, table.headers).to_csv(out / "table.csv", index=False)
    pictures = sweep_figures(results, out) if "avg_gap" in table.columns else []
    print(markdown, end="")
    written = ", ".join(str(p) for p in [out / "table.md", out / "table.csv", *pictures])
    print(f"\n({len(results)} runs; written: {written})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
