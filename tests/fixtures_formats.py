"""Writers of small fixture files in the real on-disk formats that data.datasets reads."""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


class Py2StrPickler(pickle._Pickler):  # the pure-Python pickler has an overridable dispatch
    """Pickles bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING opcodes), which is what
    the original CIFAR pickles, written by Python 2's cPickle, contain: keys, names and the
    numpy arrays' raw data all come back as str under encoding='latin1'."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_pickle(path: Path, obj: object, style: str) -> None:
    """Write ``obj`` as a Python-2-style ("py2") or plain Python 3 ("py3") protocol-2 pickle."""
    with open(path, "wb") as f:
        if style == "py2":
            Py2StrPickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path, variant: str = "cifar10", per_batch: int = 5, seed: int = 0,
                style: str = "py2", names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Write a CIFAR-10 (5 train batches + test batch) or CIFAR-100 (train + test) python
    release with ``per_batch`` random images per file; returns the raw rows and labels."""
    rng = np.random.default_rng(seed)
    ten = variant == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    out: dict[str, list] = {"train_rows": [], "train_labels": [], "test_rows": [],
                            "test_labels": []}
    for name in [*train_files, "test_batch" if ten else "test"]:
        n = per_batch * (5 if not ten and name == "train" else 1)
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if ten else 100, n).tolist()
        batch = {b"batch_label": f"batch {name}".encode(), b"data": rows,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        if ten:
            batch[b"labels"] = labels
        else:
            batch[b"fine_labels"] = labels
            batch[b"coarse_labels"] = [label // 5 for label in labels]
        dump_pickle(folder / name, batch, style)
        split = "test" if name.startswith("test") else "train"
        out[f"{split}_rows"].append(rows)
        out[f"{split}_labels"] += labels
    if ten:
        meta = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                b"label_names": [n.encode() for n in (names or CIFAR10_NAMES)]}
    else:
        meta = {b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    dump_pickle(folder / ("batches.meta" if ten else "meta"), meta, style)
    return {k: np.concatenate(v) if k.endswith("rows") else np.array(v) for k, v in out.items()}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims, then data."""
    header = struct.pack(">I", magic if magic is not None else 0x0800 + array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, gz: bool, n_train: int = 6, n_test: int = 4,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files (gzipped when ``gz``) with random content."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def save_image(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    """Save (H, W, 3) or (H, W) uint8 pixels; fmt PNG keeps them exact whatever the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def write_image_folder(root: Path, classes: list[str], train: int = 2, test: int = 1,
                       size: int = 32, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Write root/{train,test}/<class>/NNNN.png; returns split -> [(class, CHW pixels)] in the
    expected load order (class by class, file name order)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    for split, n in (("train", train), ("test", test)):
        for name in classes:
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                save_image(root / split / name / f"{i:04d}.png", pixels)
                out[split].append((name, pixels.transpose(2, 0, 1)))
    return out


def make_tar(source: Path, archive: Path) -> Path:
    """Pack ``source`` as the archive's single top folder (named like ``source``)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


def write_tinyimagenet(base: Path, wnids: list[str], per_class: int = 2,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, str]]:
    """Write a tiny-imagenet-200 tree with 64x64 PNG data in .JPEG files (lossless, so pixels
    can be checked), the first training image of each class in grayscale, one val image per
    class, and an unlabelled test/ folder. Returns relative path -> (expected CHW RGB, wnid)."""
    rng = np.random.default_rng(seed)
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    expected: dict[str, tuple[np.ndarray, str]] = {}
    annotations = []
    for k, wnid in enumerate(wnids):
        boxes = []
        for i in range(per_class):
            rel = f"train/{wnid}/images/{wnid}_{i}.JPEG"
            if i == 0:  # grayscale, as some real Tiny ImageNet images are
                gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
                save_image(base / rel, gray)
                expected[rel] = (np.repeat(gray[None], 3, axis=0), wnid)
            else:
                rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                save_image(base / rel, rgb)
                expected[rel] = (rgb.transpose(2, 0, 1), wnid)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        save_image(base / "val" / "images" / f"val_{k}.JPEG", rgb)
        expected[f"val/images/val_{k}.JPEG"] = (rgb.transpose(2, 0, 1), wnid)
        annotations.append(f"val_{k}.JPEG\t{wnid}\t1\t2\t60\t61\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    save_image(base / "test" / "images" / "test_0.JPEG",
               rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), fmt="JPEG")
    return expected


def cache_files(cache: Path) -> list[Path]:
    """The decoded-dataset cache files under a cache dir."""
    return sorted((cache / "datasets").glob("*.npz"))


def forbid(monkeypatch, module, *names: str) -> None:
    """Make the named functions of `module` raise, to prove a load does not decode."""
    def boom(*args, **kwargs):
        raise AssertionError("the source was read although the cache should have been used")
    for name in names:
        monkeypatch.setattr(module, name, boom)


def assert_same(a, b) -> None:
    """Two loads gave the same dataset, tensor for tensor."""
    assert a.fingerprint == b.fingerprint and a.classes == b.classes
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
