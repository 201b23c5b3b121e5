"""`python -m runner.tune DIR [--write]`: the pick of a hyper-parameter search (`experiment=tune`).

For every method of the sweep under DIR (its finished runs with D_R), the grid point (lr x
decay_every) with the lowest mean Avg. Gap over the sweep's seeds, as the AMUN code's tuning keeps
the best Avg. Gap. Prints each method's grid of mean gaps and the pick; `--write` stores the pick
in `conf/method_dataset/<method>_<dataset>.yaml` (the dataset as the config group option the runs
chose, read from each job's `.hydra/hydra.yaml`), with the grid, the seeds, the reproducing command
and the commit in its comments, so the runner uses it whenever that method runs on that dataset.
Runs without D_R are listed for information and never written: a method_dataset file applies to a
method whatever its use_retain.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from runner.report import load_results
from runner.results import METRICS_FILE

CONF = Path(__file__).resolve().parent.parent / "conf"
KEYS = ("lr", "decay_every")


def _choice(run_dir: Path) -> str:
    """The dataset group option a job ran with."""
    hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
    return str(hydra.hydra.runtime.choices.dataset)


def grids(root: Path) -> dict[tuple[str, str, bool], dict[tuple, list[float]]]:
    """{(dataset option, method, use_retain): {(lr, decay_every): [Avg. Gap of each seed]}}."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob(METRICS_FILE)):
        r = load_results(path.parent)[0]
        if r.get("status") != "ok" or r.get("method") == "retrain":
            continue
        m = r["config"]["method"]
        out[(_choice(path.parent), r["method"], r["use_retain"])][tuple(m[k] for k in KEYS)] \
            .append(r["avg_gap"])
    return out


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


def _commits(root: Path) -> str:
    commits = {r.get("git_commit", "unknown") for r in load_results(root) if r.get("status") == "ok"}
    return ", ".join(sorted(commits))


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


def render(dataset: str, method: str, grid: dict[tuple, list[float]], root: Path,
           seeds: list, old: str | None = None) -> str:
    """The method_dataset file of the pick. `old`: the file it replaces, whose other keys (AMUN's
    eps_init, say) and their comments are kept after the pick."""
    lr, decay = best(grid)
    rest = []
    if old:
        kept = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(old)).items()
                if k not in KEYS}
        if kept:
            rest = [*_own_comments(old), *OmegaConf.to_yaml(OmegaConf.create(kept)).splitlines()]
    lines = [
        "# @package method",
        BEGIN,
        f"# Tuned on dataset={dataset}, with D_R: the lowest mean Avg. Gap over seeds {seeds} on the",
        f"# grid below (mean Avg. Gap per lr and decay_every), written by `python -m runner.tune "
        f"{root} --write`",
        f"# from the sweep `{_command(root)}`",
        f"# (code at {_commits(root)}). What this file does not set is as in conf/method/"
        f"{method}.yaml.",
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
    if not found:
        print(f"no finished runs under {args.sweep_dir}", file=sys.stderr)
        return 1
    seeds = sorted({r["seed"] for r in load_results(args.sweep_dir) if r.get("status") == "ok"})
    for (dataset, method, use_retain), grid in sorted(found.items()):
        lr, decay = best(grid)
        n = {len(v) for v in grid.values()}
        print(f"\n{method} on {dataset} ({'with' if use_retain else 'without'} D_R, "
              f"{'/'.join(map(str, sorted(n)))} seed(s) per point): best lr={lr:g} "
              f"decay_every={decay} (Avg. Gap {np.mean(grid[(lr, decay)]):.2f})")
        print("\n".join("  " + line for line in _table(grid)))
        if args.write and use_retain:
            path = args.conf / "method_dataset" / f"{method}_{dataset}.yaml"
            old = path.read_text() if path.exists() else None
            path.write_text(render(dataset, method, grid, args.sweep_dir, seeds, old))
            print(f"  written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
