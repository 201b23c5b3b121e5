"""Time-to-accuracy of a training recipe: train the configured model from scratch `--repeats`
times (seeds 0, 1, ...) on the whole training set and report the training seconds and the test
accuracy of each, with the same code the runner trains every original, oracle and reference model
with (`runner.train.train_from_scratch`).

    python -m benchmarks.fast [--repeats 5] [hydra overrides ...]

Defaults: `model=airbench train=fast` on `dataset=cifar10_jpeg` with all of its images
(`dataset.subset.train=null dataset.subset.test=null`) and airbench's augmentation, flip + 2-pixel
translation with reflect padding (`dataset=cifar10_jpeg` turns augmentation off for its CPU subset). Data loading is not
timed (the images are put on the device first); the whitening init and every training step are.
One extra, untimed run first takes the device's start-up (and compiling, with
`train.compile=true`). Writes outputs/bench/fast.json.
"""

from __future__ import annotations

import argparse

from benchmarks.common import compose_config, device_name, summary, timed, with_defaults, write
from runner.config import validate
from runner.evaluate import predict
from runner.trained import (eval_batch_size, fit_new_model, load_dataset, new_model,
                            resolve_device)

DEFAULTS = ["dataset=cifar10_jpeg", "dataset.subset.train=null", "dataset.subset.test=null",
            "dataset.augment.crop_pad=2", "dataset.augment.flip=true", "dataset.augment.pad_mode=reflect",
            "model=airbench", "train=fast", "logger=none"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default="fast")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    overrides = with_defaults(DEFAULTS, args.overrides)
    cfg = compose_config(overrides)
    validate(cfg)
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg).to(device)

    def train_once(seed: int) -> tuple[float, float]:
        model = new_model(cfg, device, seed)
        seconds = timed(lambda: fit_new_model(cfg, model, ds.train_x, ds.train_y, seed, "fast"),
                        device)
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
