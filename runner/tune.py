"""`python -m runner.tune DIR [--write]`: the pick of a hyper-parameter search (`experiment=tune`).

For every method of the sweep under DIR (its finished runs with D_R), the grid point (lr x
decay_every) with the lowest mean Avg. Gap over the sweep's seeds, as the AMUN code's tuning keeps
the best Avg. Gap. Prints each method's grid of mean gaps and the pick; `--write` stores the pick
in `conf/method_dataset/<method>_<dataset>.yaml` (the dataset as the config group option the runs
chose, read from each job's `.hydra/hydra.yaml`), with the grid, the seeds, the reproducing command
and the commit in its comments, so the runner uses it whenever that method runs on that dataset.
Runs without D_R are listed for information and never written: a method_dataset file applies to a
method whatever its use_retain. A method is not written (and the command exits 1) when its runs
differ in anything but lr, decay_every and the seeds, come from several commits, have grid points
with different seeds, lack a grid point another method of the sweep ran, or include a run without
a result: a pick must compare like with like, on the same grid for every method.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from runner.report import setting_of, status_of
from runner.results import METRICS_FILE

CONF = Path(__file__).resolve().parent.parent / "conf"
KEYS = ("lr", "decay_every")
SWEPT = {f"method.{k}" for k in KEYS}


def _choice(run_dir: Path) -> str:
    """The dataset group option a job ran with."""
    hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
    return str(hydra.hydra.runtime.choices.dataset)


@dataclass
class Search:
    """The runs of one method (with or without D_R) on one dataset option."""

    grid: dict = field(default_factory=lambda: defaultdict(dict))  # point -> {seed: Avg. Gap}
    settings: set = field(default_factory=set)   # everything but lr, decay_every and seeds
    commits: set = field(default_factory=set)
    not_ok: list = field(default_factory=list)   # "status: run dir" of runs without a result

    def problems(self) -> list[str]:
        """Why this search cannot be trusted to pick (empty: it can)."""
        out = []
        if len(self.settings) > 1:
            differ = sorted({k for s in self.settings for k, v in s
                             if any(dict(t).get(k) != v for t in self.settings)})
            out.append(f"its runs differ in more than lr and decay_every: {differ}")
        if len(self.commits) > 1:
            out.append(f"its runs come from several commits: {sorted(self.commits)}")
        seeds = {tuple(sorted(v)) for v in self.grid.values()}
        if len(seeds) > 1:
            out.append(f"its grid points have different seeds: {sorted(seeds)}")
        out += [f"a run without a result: {line}" for line in self.not_ok]
        return out

    def means(self) -> dict[tuple, list[float]]:
        return {point: list(gaps.values()) for point, gaps in self.grid.items()}


def grids(root: Path) -> dict[tuple[str, str, bool], Search]:
    """{(dataset option, method, use_retain): its Search} over every job under root."""
    out: dict = defaultdict(Search)
    for path in sorted(root.rglob(METRICS_FILE)):
        r = json.loads(path.read_text())
        cfg = r.get("config", {})
        method = cfg.get("method", {})
        if method.get("name") in (None, "retrain"):
            continue
        search = out[(_choice(path.parent), method["name"], method.get("use_retain"))]
        if r.get("status") != "ok":
            search.not_ok.append(f"{status_of(r)}: {path.parent}")
            continue
        search.settings.add(tuple(sorted((k, v) for k, v in setting_of(r).items()
                                         if k not in SWEPT)))
        search.commits.add(r.get("git_commit", "unknown"))
        search.grid[tuple(method[k] for k in KEYS)][(r["seed"], cfg["forget"].get("seed"))] = \
            r["avg_gap"]
    return dict(out)


def best(grid: dict[tuple, list[float]]) -> tuple:
    """The grid point with the lowest mean gap (ties: the first in sorted order)."""
    return min(sorted(grid), key=lambda point: np.mean(grid[point]))


def _table(grid: dict[tuple, list[float]]) -> list[str]:
    lrs = sorted({p[0] for p in grid}, reverse=True)
    decays = sorted({p[1] for p in grid})
    lines = ["lr \\ decay_every: " + "  ".join(f"{d:>6}" for d in decays)]
    for lr in lrs:
        cells = [f"{np.mean(grid[(lr, d)]):6.2f}" if (lr, d) in grid else "     -" for d in decays]
        lines.append(f"{lr:<18g} " + "  ".join(cells))
    return lines


def _command(root: Path) -> str:
    """The command line of the sweep under root, from its multirun.yaml."""
    records = sorted(root.rglob("multirun.yaml"))
    if not records:
        return "(no multirun.yaml: the command is unknown)"
    task = OmegaConf.load(records[0]).hydra.overrides.task
    return "python -m runner -m " + " ".join(str(t) for t in task)


BEGIN, END = "# --- picked by runner.tune:", "# --- end of the pick"


def _own_comments(text: str) -> list[str]:
    """The comment lines of a method_dataset file, less its package line and any earlier pick."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith(BEGIN):
            inside = True
        elif line.startswith(END):
            inside = False
        elif line.startswith("#") and not inside and not line.startswith("# @package"):
            out.append(line)
    return out


def render(dataset: str, method: str, search: Search, root: Path, old: str | None = None) -> str:
    """The method_dataset file of the pick. `old`: the file it replaces, whose other keys (AMUN's
    eps_init, say) are kept after the pick, with its comments (less an earlier pick's)."""
    grid = search.means()
    lr, decay = best(grid)
    seeds = sorted({seed for gaps in search.grid.values() for seed, _ in gaps})
    rest = []
    if old:
        kept = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(old)).items()
                if k not in KEYS}
        if kept:
            rest = ["# Kept from the file this pick replaced:", *_own_comments(old),
                    *OmegaConf.to_yaml(OmegaConf.create(kept)).splitlines()]
    lines = [
        "# @package method",
        BEGIN,
        f"# Tuned on dataset={dataset}, with D_R: the lowest mean Avg. Gap over seeds {seeds} on the",
        f"# grid below (mean Avg. Gap per lr and decay_every), written by `python -m runner.tune "
        f"{root} --write`",
        f"# from the sweep `{_command(root)}`",
        f"# (code at {', '.join(sorted(search.commits))}). What this file does not set is as in "
        f"conf/method/{method}.yaml.",
        *[f"#   {line}" for line in _table(grid)],
        END,
        f"lr: {lr!r}",
        f"decay_every: {decay}",
        *rest,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--write", action="store_true",
                        help="write each pick (with D_R) to conf/method_dataset/")
    parser.add_argument("--conf", type=Path, default=CONF, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    found = grids(args.sweep_dir)
    if not any(search.grid for search in found.values()):
        print(f"no finished runs under {args.sweep_dir}", file=sys.stderr)
        return 1
    refused = 0
    points = {key[0]: set() for key in found}  # every grid point run on each dataset
    for (dataset, _, _), search in found.items():
        points[dataset] |= set(search.grid)
    for (dataset, method, use_retain), search in sorted(found.items()):
        problems = search.problems()
        missing = sorted(points[dataset] - set(search.grid))
        if missing:  # an unfinished sweep: the same grid for every method, or no pick
            problems.append(f"its grid lacks points other methods of the sweep ran: {missing}")
        if not search.grid:
            print(f"\n{method} on {dataset}: no finished run", *problems, sep="\n  ")
            refused += 1
            continue
        grid = search.means()
        lr, decay = best(grid)
        n = {len(v) for v in grid.values()}
        print(f"\n{method} on {dataset} ({'with' if use_retain else 'without'} D_R, "
              f"{'/'.join(map(str, sorted(n)))} seed(s) per point): best lr={lr:g} "
              f"decay_every={decay} (Avg. Gap {np.mean(grid[(lr, decay)]):.2f})")
        print("\n".join("  " + line for line in _table(grid)))
        if problems:
            print("  not written:" if args.write and use_retain else "  note:", *problems,
                  sep="\n    ")
            refused += bool(args.write and use_retain)
        elif args.write and use_retain:
            path = args.conf / "method_dataset" / f"{method}_{dataset}.yaml"
            old = path.read_text() if path.exists() else None
            path.write_text(render(dataset, method, search, args.sweep_dir, old))
            print(f"  written: {path}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
