"""Time-to-accuracy of a training recipe: train the configured model from scratch `--repeats`
times (seeds 0, 1, ...) on the whole training set and report the training seconds and the test
accuracy of each, with the same code the runner trains every original, oracle and reference model
with (`runner.train.train_from_scratch`).

    python -m benchmarks.fast [--repeats 5] [hydra overrides ...]

Defaults: `model=airbench train=fast` on `dataset=cifar10_jpeg` with all of its images
(`dataset.subset.train=null dataset.subset.test=null`) and airbench's augmentation, flip + 2-pixel
translation (`dataset=cifar10_jpeg` turns augmentation off for its CPU subset). Data loading is not
timed (the images are put on the device first); the whitening init and every training step are.
One extra, untimed run first takes the device's start-up (and compiling, with
`train.compile=true`). Writes outputs/bench/fast.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from benchmarks.common import device_name, summary, timed, write
from data.loader import Augment, Batches
from runner.config import build_model, validate
from runner.evaluate import predict
from runner.train import train_from_scratch
from runner.trained import eval_batch_size, load_dataset, resolve_device

CONF = str(Path(__file__).resolve().parent.parent / "conf")
DEFAULTS = ["dataset=cifar10_jpeg", "dataset.subset.train=null", "dataset.subset.test=null",
            "dataset.augment.crop_pad=2", "dataset.augment.flip=true",
            "model=airbench", "train=fast", "logger=none"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default="fast")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    given = {o.split("=", 1)[0] for o in args.overrides}
    overrides = [o for o in DEFAULTS if o.split("=", 1)[0] not in given] + args.overrides
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg).to(device)
    recipe = cfg.train

    def train_once(seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        model = build_model(cfg.model, cfg.dataset).to(device)
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        batches = Batches(ds.train_x, ds.train_y, batch_size=recipe.batch_size, shuffle=True,
                          seed=seed, augment=Augment(**cfg.dataset.augment),
                          channels_last=recipe.channels_last)
        seconds = timed(lambda: train_from_scratch(model, batches, recipe, desc="fast"), device)
        acc = predict(model, ds.test_x, eval_batch_size(cfg, device)).argmax(1) == ds.test_y
        return seconds, float(acc.float().mean()) * 100

    train_once(10_000)  # CUDA/cuDNN start-up (and compiling, with train.compile) outside the timed runs
    runs = [train_once(seed) for seed in range(args.repeats)]
    record = {"device": device_name(device), "overrides": overrides,
              "n_train": len(ds.train_y), "n_test": len(ds.test_y),
              "train_seconds": summary([s for s, _ in runs]),
              "test_accuracy": summary([a for _, a in runs])}
    path = write(args.name, record)
    print(f"device: {record['device']}\noverrides: {' '.join(overrides)}")
    for seed, (s, a) in enumerate(runs):
        print(f"  seed {seed}: {s:7.2f} s of training, test accuracy {a:.2f} %")
    print(f"written: {path}")
    return record


if __name__ == "__main__":
    main()
