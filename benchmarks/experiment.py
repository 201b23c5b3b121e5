"""A whole small unlearning experiment, timed stage by stage, from an empty cache: the reference
models (`stage=reference`), then one run of the method with its evaluators (original, retrain
oracle, AMUN's adversarial set, unlearning, evaluation with RMIA on those reference models).

    python -m benchmarks.experiment [hydra overrides ...]

Defaults: `method=amun eval=rmia reference.num_models=4 logger=none` on the default dataset
(digits); any override replaces them, e.g. on a GPU
`dataset=cifar10_jpeg dataset.subset.train=null dataset.subset.test=null model=airbench train=fast
reference.num_models=16 device=cuda`. The cache is a fresh folder under outputs/bench/ and is
deleted afterwards, so every model is trained inside the timed stages. Writes
outputs/bench/experiment.json (or `--name`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import OUT_DIR, compose_config, device_name, with_defaults, write
from runner.__main__ import execute
from runner.trained import resolve_device

DEFAULTS = ["method=amun", "eval=rmia", "reference.num_models=4", "logger=none"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="experiment")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="experiment-", dir=OUT_DIR))
    overrides = [*with_defaults(DEFAULTS, args.overrides), f"paths.cache_dir={work / 'cache'}"]
    try:
        cfg = compose_config(overrides)
        ref_cfg = compose_config([*overrides, "stage=reference"])
        start = time.perf_counter()
        ref = execute(ref_cfg, work / "reference")
        run = execute(cfg, work / "run")
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stages = {"data": ref["stage_seconds"]["data"] + run["stage_seconds"].get("data", 0.0),
              "reference_models": ref["stage_seconds"]["reference"],
              **{k: v for k, v in run["stage_seconds"].items() if k != "data"}}
    record = {"device": device_name(resolve_device(cfg.device)), "overrides": overrides[:-1],
              "stage_seconds": stages, "total_seconds": total,
              "metrics": run["metrics"], "avg_gap": run["avg_gap"],
              "adversarial": run.get("adversarial"), "cuda": torch.cuda.is_available()}
    path = write(args.name, record)
    print(f"device: {record['device']}\noverrides: {' '.join(record['overrides'])}")
    for stage, seconds in stages.items():
        print(f"  {stage:<18} {seconds:8.1f} s")
    print(f"  {'total':<18} {total:8.1f} s\nwritten: {path}")
    return record


if __name__ == "__main__":
    main()
