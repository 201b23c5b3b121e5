"""What the benchmarks share: data, models, a synchronizing timer, repeat statistics and the JSON
record under outputs/bench/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir

from data import datasets
from models.airbench import AirbenchNet
from models.resnet import ResNet18
from models.small import SmallCNN

OUT_DIR = Path(os.environ.get("UNLEARN_BENCH_DIR", "outputs/bench"))
CONF = str(Path(__file__).resolve().parent.parent / "conf")
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def with_defaults(defaults: list[str], given: list[str]) -> list[str]:
    """Hydra overrides: each default whose key `given` does not set, then `given`."""
    keys = {o.split("=", 1)[0] for o in given}
    return [o for o in defaults if o.split("=", 1)[0] not in keys] + list(given)


def compose_config(overrides: list[str]):
    """The runner's config tree (conf/) composed with `overrides`."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} logical cores"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of fn(), with the device's queued work finished before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    """Median and spread (min, max) of repeated measurements, and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def cifar_shaped(source: str, n_train: int, n_test: int, seed: int = 0):
    """(train_x, train_y, test_x, test_y) as uint8 (N, 3, 32, 32) / int64 on the CPU: `synthetic`
    random images, or the first images of a class-balanced subset of the CIFAR-10 JPEG set
    (`source` = the path of the archive or its extracted folder)."""
    if source == "synthetic":
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n_train,), generator=g),
                torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n_test,), generator=g))
    ds = datasets.load("cifar10", root=source, source="imagefolder",
                       cache_dir=os.environ.get("UNLEARN_CACHE_DIR", "outputs/cache"))
    ds = ds.subset(None if n_train >= len(ds.train_y) else n_train - n_train % 10,
                   None if n_test >= len(ds.test_y) else n_test - n_test % 10, seed=seed)
    return ds.train_x, ds.train_y, ds.test_x, ds.test_y


MODELS = {
    "small_cnn": lambda: SmallCNN(num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN,
                                  std=CIFAR_STD),
    "resnet18": lambda: ResNet18(num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN,
                                 std=CIFAR_STD),
    "airbench": lambda: AirbenchNet(num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN,
                                    std=CIFAR_STD, tta=0),
}


def write(name: str, record: dict) -> Path:
    """outputs/bench/<name>.json, with the device, versions and time of the measurement."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "torch": torch.__version__, "python": platform.python_version(), **record}
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
