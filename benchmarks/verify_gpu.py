"""The paper-scale check on a GPU as one prepared command (`make verify-gpu`): within a time
budget (9 minutes), on the CIFAR-10 JPEG set of shared/data (all 50,000 / 10,000 images):

1. `data`: decode the JPEGs once into the work folder's cache (every later stage reads that);
2. `comparison`: AMUN's Table 1 comparison at full scale (conf/experiment/verify_gpu.yaml: the
   paper's ResNet-18 with train=verify_gpu, crop + flip, forget 10 %, seed 1, with D_R, RMIA on 8
   reference models): retrain, FT, RL, GA, SalUn, AMUN, AMUN+SalUn, then its table with the
   regime (the original's train and test accuracy, the oracle's forget vs test accuracy);
3. `fast`: `benchmarks.fast`, time to accuracy of `model=airbench train=fast`;
4. `control`: `benchmarks.airbench_control`, the public airbench package's own trainer on the
   same tensors (does 94 % exist on the JPEG copy at all?);
5. `throughput`: `make bench-gpu`'s throughput rows (`benchmarks.throughput`, fewer PGD images).

Each stage runs in its own process. Before a stage starts, its estimate is compared with the time
left: a stage that does not fit is skipped with a message instead of running out the clock. The
comparison gets the time left minus what `fast` and `control` are estimated to need, and is
stopped (SIGTERM: the runner checkpoints what it trains) at that deadline; its table then shows
the jobs that finished. While it runs, progress is printed every `--progress-s` seconds with the
jobs done and an estimate of the rest. After every stage, `<out>/verify.json` and `verify.md` are
rewritten, so a run stopped at any point leaves what it finished.

    python -m benchmarks.verify_gpu [--device cuda] [--budget-s 540] [--tiny] [--out DIR]

`--tiny` runs every stage at toy size (a 600 / 200 subset, a width-8 ResNet-18 for 2 epochs, 2
reference models, 1 epoch of unlearning, 5 PGD steps per radius): the same code path end to end
in a few minutes on a CPU, before GPU minutes are spent (`make verify-gpu DEVICE=cpu TINY=1`).
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: torch's and hydra's imports are in it

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import device_name
from runner.trained import native_precision

METHODS = ("retrain", "ft", "rl", "ga", "salun", "amun", "amun_salun")  # the tables' order
# The sweep's order: retrain first (it trains the shared models), then the paper's own method, so
# a comparison stopped at its deadline has lost baselines rather than AMUN.
SWEEP_ORDER = ("retrain", "amun", "amun_salun", "salun", "rl", "ft", "ga")
GRACE_S = 15  # between SIGTERM (the runner checkpoints what it trains) and SIGKILL
COLUMNS = "forget_acc,retain_acc,test_acc,mia_efficacy,rmia_ft_auc,avg_gap"
# AMUN's Table 1, CIFAR-10, forget 10 %, with D_R (mean of 27 runs; shared/REFERENCE.md):
# forget / retain / test accuracy, RMIA FT AUC, Avg. Gap.
PAPER_TABLE1 = {
    "retrain": (94.49, 100.0, 94.33, 50.00, 0.0), "ft": (95.16, 96.64, 92.21, 52.08, 2.06),
    "rl": (95.54, 97.47, 92.17, 51.33, 1.74), "ga": (98.94, 99.22, 93.39, 60.96, 4.28),
    "salun": (96.25, 98.14, 93.06, 50.88, 1.44), "amun": (95.45, 99.57, 93.45, 50.18, 0.62),
    "amun_salun": (95.02, 99.58, 93.29, 50.72, 0.68),
}
# Seconds on one H100 (bench.md's figures: ResNet-18 trains at 48,000 images/s, its PGD runs
# 146 samples/s, the JPEG decode took 16.6 s, airbench 2.9 s a run) and, for --tiny, on the
# project's 2-core CPU.
ESTIMATE_S = {"data": (30, 40), "comparison": (420, 120), "fast": (40, 20),
              "control": (45, 10), "throughput": (90, 20)}
# The comparison can stop part-way and still report the jobs that finished: it starts when the
# time left covers its first job (the shared models and the retrain oracle's evaluation).
MINIMUM_S = {"comparison": (180, 40)}


@dataclass
class Context:
    """What the stages share: the settings and the record written after each stage."""

    device: str
    tiny: bool
    data: str
    work: Path
    out: Path
    deadline: float
    progress_s: float
    wheels: Path
    record: dict = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    def env(self) -> dict:
        return {**os.environ, "UNLEARN_CACHE_DIR": str(self.cache),
                "UNLEARN_BENCH_DIR": str(self.work / "bench"), "CIFAR10_JPEG": self.data,
                "PYTHONUNBUFFERED": "1"}

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_process(cmd: list[str], ctx: Context, deadline: float, label: str,
                progress: Callable[[], str] | None = None) -> dict:
    """Run `cmd` until it ends or `deadline` (monotonic seconds) passes, and at the latest
    GRACE_S before the whole budget's end; then SIGTERM, and SIGKILL GRACE_S later. If this
    process is interrupted meanwhile, the child's process group is stopped the same way before the
    interruption goes on (a child in its own session would otherwise outlive us on the GPU).
    Returns its exit code, seconds, and whether it was stopped."""
    start = time.monotonic()
    deadline = min(deadline, ctx.deadline - GRACE_S)
    proc = subprocess.Popen(cmd, env=ctx.env(), start_new_session=True)
    stopped, last = False, start
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if now >= deadline and not stopped:
                print(f"  time limit reached: stopping {label} (SIGTERM)", flush=True)
                os.killpg(proc.pid, signal.SIGTERM)
                stopped, deadline = True, now + GRACE_S
            elif now >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
            if progress and now - last >= ctx.progress_s:
                print(f"  {progress()} (elapsed {now - start:.0f} s)", flush=True)
                last = now
    except BaseException:
        _stop(proc)
        raise
    return {"returncode": proc.returncode, "seconds": time.monotonic() - start,
            "stopped_at_limit": stopped}


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there GRACE_S later."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def fresh_json(path: Path) -> Path:
    """`path`, deleted first: a stage that fails reports nothing rather than an earlier run's."""
    path.unlink(missing_ok=True)
    return path


def _read_ok(path: Path) -> dict | None:
    """A job's metrics.json if the job finished (a running job's says "running")."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):  # being rewritten this moment
        return None
    return m if m.get("status") == "ok" else None


def _ok(path: Path) -> bool:
    return _read_ok(path) is not None


def finished(sweep: Path) -> list[dict]:
    """The metrics.json of the sweep's jobs that finished."""
    return [m for m in map(_read_ok, sorted(sweep.glob("*/metrics.json"))) if m is not None]


# ---------------------------------------------------------------------------------- the stages

def stage_data(ctx: Context, deadline: float) -> dict:
    code = ("from benchmarks.common import cifar_shaped; import sys; "
            "x, y, xt, yt = cifar_shaped(sys.argv[1], 10**9, 10**9); "
            "print(f'  decoded {len(y)} train and {len(yt)} test images')")
    if ctx.data == "synthetic":
        return {"skipped": "synthetic data: nothing to decode"}
    return run_process([sys.executable, "-c", code, ctx.data], ctx, deadline, "the decode")


def comparison_groups(tiny: bool) -> list[list[str]]:
    """The runner commands of the comparison: one per group of methods that take the same
    overrides (at toy size the unlearning methods get 1 epoch, AMUN 5 PGD steps per radius)."""
    if not tiny:
        return [[f"method={','.join(SWEEP_ORDER)}"]]
    # One command per AMUN variant: a sweep composes its base config with the default method,
    # which has no `attack` to override.
    amun = ["method.epochs=1", "method.attack.steps=5"]
    return [["method=retrain"], ["method=amun", *amun], ["method=amun_salun", *amun],
            ["method=salun,rl,ft,ga", "method.epochs=1"]]


def comparison_overrides(ctx: Context) -> list[str]:
    common = [f"device={ctx.device}", f"paths.cache_dir={ctx.cache}",
              f"dataset.root={ctx.data}", f"hydra.sweep.dir={ctx.work / 'comparison'}"]
    if ctx.tiny:
        common += ["dataset.subset.train=600", "dataset.subset.test=200", "model.width=8",
                   "train.epochs=2", "train.batch_size=64", "reference.num_models=2",
                   tiny_precision(ctx)]
    return common


def tiny_precision(ctx: Context) -> str:
    """At toy size the recipes' bf16 only where the device has it natively (an AVX2 CPU
    emulates it, 13x slower than fp32)."""
    return f"train.precision={native_precision(torch.device(ctx.device))}"


def stage_comparison(ctx: Context, deadline: float) -> dict:
    sweep = ctx.work / "comparison"
    jobs = len(METHODS)

    def progress() -> str:
        ends = sorted(path.stat().st_mtime for path in sweep.glob("*/metrics.json")
                      if _ok(path))
        done = len(ends)
        if done == 0:  # the first job trains the original, the oracle and the reference models
            return f"comparison: 0 of {jobs} jobs done (the first trains the shared models)"
        rest = ""
        if done >= 2:  # the later jobs only unlearn and evaluate: time them apart from the first
            per_job = (ends[-1] - ends[0]) / (done - 1)
            rest = f", about {per_job * (jobs - done):.0f} s to go"
        return f"comparison: {done} of {jobs} jobs done{rest}"

    # This run's jobs only: the cache keeps the models, the folder keeps no earlier run's results.
    shutil.rmtree(sweep, ignore_errors=True)
    begun, runs = time.monotonic(), []
    for group in comparison_groups(ctx.tiny):
        if time.monotonic() >= deadline:
            runs.append({"group": group, "skipped": "no time left"})
            continue
        cmd = [sys.executable, "-m", "runner", "-m", "experiment=verify_gpu", *group,
               *comparison_overrides(ctx)]
        runs.append({"group": group, **run_process(cmd, ctx, deadline, "the comparison",
                                                   progress)})
    result = {"runs": runs, "jobs_done": len(finished(sweep)),
              "jobs": jobs, "seconds": time.monotonic() - begun}
    table = ctx.out / "comparison"
    try:
        report = subprocess.run([sys.executable, "-m", "runner.report", str(sweep), "--out",
                                 str(table), "--columns", COLUMNS], env=ctx.env(),
                                capture_output=True, text=True,
                                timeout=max(ctx.left() - GRACE_S, 1))
        result["table"] = report.stdout if report.returncode == 0 else report.stderr
    except subprocess.TimeoutExpired:
        result["table"] = "runner.report: stopped at the budget's end"
    result["against_paper"] = against_paper(sweep)
    return result


def against_paper(sweep: Path) -> list[dict]:
    """Each finished method's row next to the paper's Table 1 row (forget / retain / test
    accuracy, RMIA FT AUC, Avg. Gap)."""
    rows = []
    for m in finished(sweep):
        method = m["method"]
        ours = m.get("metrics", {}).get("unlearned", {})
        rows.append({"method": method, "ours": [ours.get(k) for k in
                                                ("forget_acc", "retain_acc", "test_acc",
                                                 "rmia_ft_auc")] + [m.get("avg_gap")],
                     "paper": list(PAPER_TABLE1.get(method, ()))})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: order.get(r["method"], len(order)))


def stage_fast(ctx: Context, deadline: float) -> dict:
    args = ["--repeats", "3", "--name", "verify_fast", f"device={ctx.device}",
            f"paths.cache_dir={ctx.cache}", f"dataset.root={ctx.data}"]
    if ctx.tiny:
        args = ["--repeats", "1", "--name", "verify_fast", f"device={ctx.device}",
                f"paths.cache_dir={ctx.cache}", f"dataset.root={ctx.data}",
                "dataset.subset.train=600", "dataset.subset.test=200", "model.widths=[8,16,16]",
                "train.epochs=1", "train.batch_size=64", tiny_precision(ctx)]
    out = fresh_json(ctx.work / "bench" / "verify_fast.json")
    result = run_process([sys.executable, "-m", "benchmarks.fast", *args], ctx, deadline,
                         "benchmarks.fast")
    return {**result, "benchmark": load_json(out)}


def stage_control(ctx: Context, deadline: float) -> dict:
    args = ["--data", ctx.data, "--wheels", str(ctx.wheels), "--name", "verify_control"]
    if ctx.tiny:
        args += ["--runs", "1", "--n-train", "600", "--n-test", "200"]
    out = fresh_json(ctx.work / "bench" / "verify_control.json")
    result = run_process([sys.executable, "-m", "benchmarks.airbench_control", *args], ctx,
                         deadline, "the airbench control")
    return {**result, "benchmark": load_json(out)}


def stage_throughput(ctx: Context, deadline: float) -> dict:
    args = ["--device", ctx.device, "--data", ctx.data, "--name", "verify_throughput"]
    if ctx.tiny:
        args += ["--models", "small_cnn", "--pgd-models", "small_cnn", "--repeats", "1",
                 "--steps", "1", "--batch-size", "16", "--workers", "0", "--infer-images", "40",
                 "--pgd-images", "8", "--pgd-epochs", "1"]
    else:
        args += ["--batch-size", "512", "--steps", "30", "--workers", "4", "--infer-images",
                 "10000", "--pgd-images", "512", "--models", "small_cnn,resnet18,airbench",
                 "--pgd-models", "resnet18"]
    out = fresh_json(ctx.work / "bench" / "verify_throughput.json")
    result = run_process([sys.executable, "-m", "benchmarks.throughput", *args], ctx, deadline,
                         "benchmarks.throughput")
    return {**result, "benchmark": load_json(out)}


STAGES: dict[str, Callable[[Context, float], dict]] = {
    "data": stage_data, "comparison": stage_comparison, "fast": stage_fast,
    "control": stage_control, "throughput": stage_throughput}


# ------------------------------------------------------------------------------ the driver

def plan(ctx: Context, names: list[str], estimates: dict[str, float],
         minimums: dict[str, float] | None = None) -> None:
    """Run `names` in order within ctx.deadline, rewriting the record after each one. A stage
    starts when the time left covers its estimate (or its minimum, where it has one)."""
    for i, name in enumerate(names, 1):
        left, need = ctx.left(), (minimums or {}).get(name, estimates[name])
        if need > left:
            entry = {"status": "skipped",
                     "reason": f"needs about {need:.0f} s, {max(left, 0):.0f} s left"}
            print(f"[{i}/{len(names)}] {name}: skipped ({entry['reason']})", flush=True)
        else:
            # The comparison leaves what the next two stages are estimated to need.
            reserve = sum(estimates[n] for n in names[i:i + 2]) if name == "comparison" else 0
            deadline = time.monotonic() + max(left - reserve, need)
            print(f"[{i}/{len(names)}] {name}: about {estimates[name]:.0f} s, at most "
                  f"{deadline - time.monotonic():.0f} s ({left:.0f} s of the budget left)",
                  flush=True)
            begun = time.monotonic()
            try:
                entry = {"status": "done", **STAGES[name](ctx, min(deadline, ctx.deadline))}
            except Exception as err:  # a broken stage must not lose the others' results
                entry = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            except KeyboardInterrupt:
                ctx.record["stages"][name] = {"status": "interrupted",
                                              "wall_seconds": time.monotonic() - begun}
                raise
            runs = [entry, *entry.get("runs", [])]  # the comparison runs several commands
            if any(r.get("returncode") not in (None, 0) and not r.get("stopped_at_limit")
                   for r in runs):
                entry["status"] = "failed"
            elif any(r.get("stopped_at_limit") for r in runs):
                entry["status"] = "stopped at the limit"
            entry["wall_seconds"] = time.monotonic() - begun
            print(f"[{i}/{len(names)}] {name}: {entry['status']} in "
                  f"{entry['wall_seconds']:.0f} s", flush=True)
        ctx.record["stages"][name] = entry
        write_record(ctx)


def write_record(ctx: Context) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    tmp = ctx.out / "verify.json.tmp"
    tmp.write_text(json.dumps(ctx.record, indent=2, default=str) + "\n")
    tmp.replace(ctx.out / "verify.json")
    (ctx.out / "verify.md").write_text(markdown(ctx.record))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown(record: dict) -> str:
    """verify.md: the stages' status, the comparison next to the paper, the benchmarks."""
    lines = [f"# verify-gpu on {record['device']}", "",
             f"Started {record['started']}, budget {record['budget_s']} s"
             f"{', toy size (--tiny)' if record['tiny'] else ''}; `{record['command']}`.", "",
             "| stage | status | seconds |", "|---|---|---|"]
    stages = record["stages"]
    for name, e in stages.items():
        lines.append(f"| {name} | {e['status']}{': ' + e['reason'] if 'reason' in e else ''}"
                     f"{': ' + e['error'] if 'error' in e else ''} | "
                     f"{_fmt(e.get('wall_seconds'))} |")
    comp = stages.get("comparison", {})
    if comp.get("table"):
        lines += ["", "## Comparison (runner.report)", "", comp["table"].strip()]
    if comp.get("against_paper"):
        lines += ["", "## Against the paper's Table 1 (CIFAR-10, forget 10 %, with D_R)", "",
                  "Forget / retain / test accuracy, RMIA FT AUC, Avg. Gap: ours (one seed, the "
                  "JPEG copy) | the paper (mean of 27 runs).", "",
                  "| method | ours | paper |", "|---|---|---|"]
        for row in comp["against_paper"]:
            lines.append(f"| {row['method']} | {' / '.join(map(_fmt, row['ours']))} | "
                         f"{' / '.join(map(_fmt, row['paper'])) or '-'} |")
    fast = (stages.get("fast") or {}).get("benchmark")
    if fast:
        lines += ["", "## train=fast, time to accuracy", "",
                  f"Training seconds {fast['train_seconds']['runs']}, test accuracy (%) "
                  f"{fast['test_accuracy']['runs']}."]
    control = (stages.get("control") or {}).get("benchmark")
    if control:
        lines += ["", "## Control: the airbench package on the same tensors", ""]
        if "skipped" in control:
            lines.append(f"Training skipped: {control['skipped']}.")
        else:
            lines.append(f"{control['package']}: training seconds "
                         f"{control['train_seconds']['runs']}, test accuracy (TTA 2, %) "
                         f"{control['test_accuracy_tta2']['runs']}.")
    thr = (stages.get("throughput") or {}).get("benchmark")
    if thr:
        lines += ["", "## Throughput (images or samples per second, medians)", "",
                  "| path | model | plain | ours | ratio |", "|---|---|---|---|---|"]
        for kind in ("train", "infer", "pgd"):
            for model, e in thr.get(kind, {}).items():
                lines.append(f"| {kind} | {model} | {e['plain']['median']:.1f} | "
                             f"{e['ours']['median']:.1f} | {e['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--tiny", action="store_true", help="every stage at toy size (CPU check)")
    ap.add_argument("--data", default=os.environ.get("CIFAR10_JPEG",
                                                     "../shared/data/cifar10-jpeg.tar.gz"))
    ap.add_argument("--work", type=Path, default=None,
                    help="cache, sweep and benchmark files (default outputs/verify_gpu[_tiny])")
    ap.add_argument("--out", type=Path, default=None,
                    help="verify.json, verify.md and the comparison table (default: "
                         "docs/results/verify_gpu, or <work>/results with --tiny)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--progress-s", type=float, default=30.0)
    ap.add_argument("--wheels", type=Path, default=Path(".whl"),
                    help="where the airbench wheel is on a machine without a package registry")
    ap.add_argument("--fresh", action="store_true", help="empty the work folder first")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device} but no CUDA device is available (--device cpu --tiny "
                 "for the toy-size check)")
    names = args.stages.split(",")
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        ap.error(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
    if args.data != "synthetic" and not Path(args.data).exists():
        ap.error(f"no CIFAR-10 JPEG set at {args.data} (--data or CIFAR10_JPEG)")
    work = args.work or Path("outputs/verify_gpu" + ("_tiny" if args.tiny else ""))
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or (work / "results" if args.tiny else Path("docs/results/verify_gpu"))
    start = T0
    ctx = Context(device=args.device, tiny=args.tiny, data=str(Path(args.data).resolve())
                  if args.data != "synthetic" else "synthetic", work=work.resolve(),
                  out=out, deadline=start + args.budget_s, progress_s=args.progress_s,
                  wheels=args.wheels)
    ctx.record = {"device": device_name(torch.device(args.device)),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": args.budget_s,
                  "tiny": args.tiny, "torch": torch.__version__,
                  "command": " ".join(["python -m benchmarks.verify_gpu", *(argv or sys.argv[1:])]),
                  "stages": {}}
    size = 1 if args.tiny else 0
    estimates = {n: ESTIMATE_S[n][size] for n in names}
    print(f"verify-gpu on {ctx.record['device']}: {', '.join(names)}; about "
          f"{sum(estimates.values()):.0f} s estimated, {args.budget_s:.0f} s budget", flush=True)

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # A SIGTERM (a scheduler's, a tool's timeout) stops the stage's processes and keeps the record.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        plan(ctx, names, estimates, {n: v[size] for n, v in MINIMUM_S.items()})
    except KeyboardInterrupt as err:
        ctx.record["interrupted"] = str(err) or "KeyboardInterrupt"
        raise
    finally:
        ctx.record["total_seconds"] = time.monotonic() - start
        write_record(ctx)
    print(f"done in {ctx.record['total_seconds']:.0f} s; written: {ctx.out / 'verify.json'}, "
          f"{ctx.out / 'verify.md'}")
    return ctx.record


if __name__ == "__main__":
    main()
