"""The control for the CIFAR-10 JPEG copy: the public `airbench` package's own trainer
(airbench94, Jordan, arXiv:2404.00498: 94.0 % in about 3 s on an A100 on the original CIFAR-10
bytes) on the same tensors the runner trains on. If airbench's own code does not reach 94 % on the
JPEG copy either, the copy, not our recipe, is why `train=fast` stays near 90 %.

    python -m benchmarks.airbench_control [--runs 3] [--data <cifar10-jpeg>] [--wheels .whl]

airbench reads `<dir>/train.pt` and `<dir>/test.pt` ({'images': uint8 N x 32 x 32 x 3, 'labels',
'classes'}, the format its CifarLoader saves from torchvision); this writes them from the decoded
JPEG set (the project's cache) into a temporary folder and runs `airbench.train94` there with its
own defaults (9.9 epochs, batch 1024, flip + 2-pixel translation, alternating flips), after one
untimed warm-up run, then `airbench.evaluate` with its TTA level 2. The clock covers
`train94` alone (the training loader, which reads train.pt, is built before it; train94 itself
also opens test.pt, 30 MB, inside it). The package comes from the package registry (`pip
install airbench==0.1.8`, the `verify` extra); on a machine without one, from a wheel in
`--wheels` installed into a temporary folder, not into the environment. airbench's trainer needs
CUDA: on a CPU the tensors are written and read back through airbench's own CifarLoader (one
augmented batch), and the training is skipped with a message. Writes outputs/bench/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import cifar_shaped, summary, write

AIRBENCH_VERSION = "0.1.8"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def import_airbench(wheels: Path | None):
    """airbench, imported as installed; else installed from a wheel in `wheels` into a temporary
    folder put on sys.path. Raises ImportError saying how to get it."""
    try:
        return importlib.import_module("airbench")
    except ImportError:
        pass
    found = sorted(wheels.glob("airbench-*.whl")) if wheels and wheels.is_dir() else []
    if not found:
        raise ImportError(f"airbench is not installed and no airbench wheel is in {wheels}: "
                          f"pip install airbench=={AIRBENCH_VERSION}")
    target = tempfile.mkdtemp(prefix="airbench-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", target, str(found[-1])], check=True)
    sys.path.insert(0, target)
    return importlib.import_module("airbench")


def write_tensors(folder: Path, x: torch.Tensor, y: torch.Tensor, name: str) -> Path:
    """`folder/<name>.pt` in airbench's format from our (N, 3, 32, 32) uint8 images."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y.clone(),
                "classes": CLASSES}, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFAR10_JPEG",
                                                     "../shared/data/cifar10-jpeg.tar.gz"),
                    help="the CIFAR-10 JPEG archive or folder, or `synthetic`")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--wheels", type=Path, default=Path(".whl"))
    ap.add_argument("--name", default="airbench_control")
    args = ap.parse_args(argv)
    x, y, xt, yt = cifar_shaped(args.data, args.n_train, args.n_test)
    airbench = import_airbench(args.wheels)
    record = {"package": f"airbench {getattr(airbench, '__version__', AIRBENCH_VERSION)}",
              "data": args.data, "n_train": len(y), "n_test": len(yt)}
    with tempfile.TemporaryDirectory() as tmp:
        write_tensors(Path(tmp) / "cifar10", x, y, "train")
        write_tensors(Path(tmp) / "cifar10", xt, yt, "test")
        if not torch.cuda.is_available():
            record["cpu_check"] = _read_back(airbench, Path(tmp) / "cifar10", len(y))
            record["skipped"] = "airbench's trainer needs CUDA (it loads its tensors onto cuda:0)"
            print(f"airbench control: {record['skipped']}; airbench's CifarLoader read the "
                  f"tensors back: {record['cpu_check']}")
            return record | {"path": str(write(args.name, record))}
        here = os.getcwd()
        os.chdir(tmp)  # airbench's train() opens its test set as the relative folder `cifar10`
        try:
            record["runs"] = _train_runs(airbench, args.runs, len(y))
        finally:
            os.chdir(here)
    record["train_seconds"] = summary([r["train_seconds"] for r in record["runs"]])
    record["test_accuracy_tta2"] = summary([r["test_accuracy_tta2"] for r in record["runs"]])
    path = write(args.name, record)
    for i, r in enumerate(record["runs"]):
        print(f"  airbench94 run {i}: {r['train_seconds']:.2f} s, "
              f"test accuracy {r['test_accuracy_tta2']:.2f} % (TTA 2)")
    print(f"written: {path}")
    return record | {"path": str(path)}


def _batch_size(airbench_hyp: dict, n_train: int) -> int:
    """airbench's batch (1024), or half a toy training set (its loader drops the last batch)."""
    return min(airbench_hyp["opt"]["batch_size"], max(n_train // 2, 1))


def _read_back(airbench, folder: Path, n_train: int) -> dict:
    """One augmented training batch through airbench's own CifarLoader, on the CPU."""
    from airbench.lib_airbench94 import hyp
    loader = airbench.CifarLoader(str(folder), train=True, batch_size=_batch_size(hyp, n_train),
                                  aug=hyp["aug"], altflip=True, gpu="cpu")
    images, labels = next(iter(loader))
    return {"batch": list(images.shape), "dtype": str(images.dtype), "labels": len(labels),
            "batches_per_epoch": len(loader)}


def _train_runs(airbench, runs: int, n_train: int) -> list[dict]:
    from airbench.lib_airbench94 import hyp
    out = []

    def loader():
        return airbench.CifarLoader("cifar10", train=True, batch_size=_batch_size(hyp, n_train),
                                    aug=hyp["aug"], altflip=True)

    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.train94(loader(), verbose=False)  # warm-up: cuDNN autotuning, outside the clock
    for _ in range(runs):
        train = loader()
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(train, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        acc = airbench.evaluate(model, test, tta_level=hyp["net"]["tta_level"])
        out.append({"train_seconds": seconds, "test_accuracy_tta2": 100 * float(acc)})
    return out


if __name__ == "__main__":
    main()
