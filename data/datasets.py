"""Image classification datasets as in-memory uint8 tensors, with an on-disk cache.

``load(name, root=..., source=...)`` reads a dataset from its usual on-disk format (see
:mod:`data.readers`), optionally downloading it with torchvision, and caches the decoded arrays
under ``cache_dir/datasets/`` keyed by the reader version, the arguments and the source files'
sizes and mtimes, so that decoding happens once and a changed file is never served stale.

Names and sources (the first source is what ``source="auto"`` picks):

- ``cifar10``, ``cifar100``: ``pickle`` (the python release), ``imagefolder`` (a directory or
  .tar.gz with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``; folder names must be the
  canonical class names).
- ``mnist``, ``fashion_mnist``: ``idx`` (raw or gzipped IDX files in root or torchvision's
  ``root/MNIST/raw`` / ``root/FashionMNIST/raw``).
- ``tinyimagenet``: ``tinyimagenet`` (the tiny-imagenet-200 tree; test split = val; label ids
  follow the sorted wnids, as torchvision's ImageFolder on train/ would give).
- ``digits``: ``sklearn`` (scikit-learn's bundled 8x8 digits; offline; ignores root).
- ``synthetic``: ``generated`` (class-conditional noise images for tests; ignores root).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import Dataset, fingerprint_of  # noqa: F401  (datasets.Dataset is the public name)
from .readers import Arrays, DatasetError  # noqa: F401  (datasets.DatasetError too)
from .sources import SOURCES_BY_NAME, Request

# Bump when a reader's output for the same files changes, so old cache entries are not reused.
READER_VERSION = 1

log = logging.getLogger("data")



def _tensor(array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    array = np.ascontiguousarray(array, dtype=dtype)  # torch warns on read-only numpy memory:
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _dataset(name: str, arrays: Arrays) -> Dataset:
    tensors = (_tensor(arrays.train_x, np.uint8), _tensor(arrays.train_y, np.int64),
               _tensor(arrays.test_x, np.uint8), _tensor(arrays.test_y, np.int64))
    return Dataset(name, *tensors, classes=tuple(arrays.classes),
                   fingerprint=fingerprint_of(*tensors))


def load(name: str, *, root: str | Path | None, source: str = "auto", download: bool = False,
         cache_dir: str | Path | None = None, **options: Any) -> Dataset:
    """Load dataset ``name`` from ``root`` in format ``source`` (see the module docstring).

    Missing files are downloaded with torchvision when ``download`` is true (formats that have
    an official download); otherwise a :class:`DatasetError` names the files expected and how to
    get them. With ``cache_dir`` the decoded arrays are cached in ``cache_dir/datasets/`` and
    archives are extracted once into ``cache_dir/extracted/``. ``options`` are per-dataset
    (only ``synthetic`` has any); unknown names, sources or options raise DatasetError.
    """
    spec = SOURCES_BY_NAME.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(SOURCES_BY_NAME)}")
    chosen = next(iter(spec.sources)) if source == "auto" else source
    if chosen not in spec.sources:
        raise DatasetError(f"dataset {name!r} has no source {source!r}; valid sources: "
                           f"auto, {', '.join(spec.sources)}")
    if spec.uses_root and root is None:
        raise DatasetError(f"dataset {name!r} needs a root folder (dataset.root)")
    request = Request(
        name=name,
        root=Path(root).expanduser().resolve() if spec.uses_root and root is not None else None,
        download=bool(download),
        cache_dir=Path(cache_dir).expanduser().resolve() if cache_dir is not None else None,
        options=spec.check_options(name, options))
    plan = spec.sources[chosen](request)
    if request.cache_dir is None:
        return _dataset(name, plan.read())
    path = _cache_path(request, chosen, plan.files)
    cached = _load_cache(name, path)
    if cached is not None:
        log.info("dataset %s (%s): cache hit %s", name, chosen, path)
        return cached
    log.info("dataset %s (%s): cache miss, reading sources (cache %s)", name, chosen, path)
    arrays = plan.read()
    dataset = _dataset(name, arrays)
    _save_cache(path, arrays)
    return dataset


# ----------------------------------------------------------------------------- cache

def _cache_path(request: Request, source: str, files: tuple[Path, ...]) -> Path:
    listing = []
    for path in files:
        st = path.stat()
        listing.append([os.path.relpath(path, request.root or "/"), st.st_size, st.st_mtime_ns])
    payload = {"reader_version": READER_VERSION, "name": request.name, "source": source,
               "root": str(request.root) if request.root else None,
               "options": request.options, "files": listing}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert request.cache_dir is not None
    return request.cache_dir / "datasets" / f"{request.name}-{source}-{key}.npz"


def _load_cache(name: str, path: Path) -> Dataset | None:
    """The cached dataset, or None when absent; a broken file is reported, deleted, and None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = Arrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                            tuple(str(c) for c in z["classes"]))
        return _dataset(name, arrays)  # also validates dtypes and shapes
    except Exception as e:  # zip/CRC/format errors all mean the same: do not trust it
        log.warning("dataset cache %s is unreadable (%s: %s); deleting it and rebuilding",
                    path, type(e).__name__, e)
        path.unlink(missing_ok=True)
        return None


def _save_cache(path: Path, arrays: Arrays) -> None:
    """Write atomically (temp file + os.replace) so readers never see a partial file."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so os.replace is atomic; not mkstemp, whose 0600 ignores the umask.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "xb") as f:
            np.savez(f, train_x=arrays.train_x, train_y=arrays.train_y, test_x=arrays.test_x,
                     test_y=arrays.test_y, classes=np.array(arrays.classes, dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        log.info("dataset cache written: %s", path)
    except OSError as e:  # the data is already decoded; a failed cache write is not fatal
        log.warning("could not write dataset cache %s: %s", path, e)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
