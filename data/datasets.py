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
import numbers
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import builtin, images, readers
from .readers import Arrays, DatasetError
from .dataset import Dataset, fingerprint_of  # noqa: F401  (datasets.Dataset is the public name)

# Bump when a reader's output for the same files changes, so old cache entries are not reused.
READER_VERSION = 1

log = logging.getLogger("data")

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


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


# ----------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Request:
    """The validated arguments of one ``load`` call, as the source planners see them."""

    name: str
    root: Path | None
    download: bool
    cache_dir: Path | None
    options: dict[str, int]


@dataclass(frozen=True)
class Plan:
    """What a source found: the files its content depends on (they go into the cache key, so a
    changed file means a new key) and how to read them when the cache misses."""

    files: tuple[Path, ...]
    read: Callable[[], Arrays]


@dataclass(frozen=True)
class Spec:
    """A dataset name: its sources (the first is the default) and options as name ->
    (default, minimum)."""

    sources: dict[str, Callable[[Request], Plan]]
    options: dict[str, tuple[int, int]] = field(default_factory=dict)
    uses_root: bool = True

    def check_options(self, name: str, options: dict[str, Any]) -> dict[str, int]:
        """Options with defaults filled in; DatasetError for unknown names or bad values."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise DatasetError(f"unknown option(s) {unknown} for dataset {name!r}; valid "
                               f"options: {sorted(self.options) or 'none'}")
        merged = {}
        for key, (default, minimum) in self.options.items():
            value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                    or value < minimum:
                raise DatasetError(f"dataset {name!r}: option {key}={value!r} must be an "
                                   f"integer >= {minimum}")
            merged[key] = int(value)
        return merged


def _fetch(what: str, url: str, root: Path, action: Callable[[], object]) -> None:
    log.info("downloading %s from %s into %s", what, url, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        action()
    except Exception as e:  # network, checksum and extraction failures alike
        raise DatasetError(f"downloading {what} from {url} into {root} failed "
                           f"({type(e).__name__}: {e}); check network access, or download "
                           f"and extract it into {root} by hand") from e


def _cifar_layout(name: str) -> readers.CifarLayout:
    return readers.CIFAR10_LAYOUT if name == "cifar10" else readers.CIFAR100_LAYOUT


def _cifar_pickle(req: Request) -> Plan:
    import torchvision.datasets as tvd  # lazy: only the pickle source needs torchvision
    from torchvision.datasets import utils as tv_utils

    root, layout = req.root, _cifar_layout(req.name)
    tv_class = tvd.CIFAR10 if req.name == "cifar10" else tvd.CIFAR100
    # root may also be the batches folder itself.
    directory = root if (root / layout.meta_file).is_file() else root / layout.folder
    missing = [f for f in layout.all_files if not (directory / f).is_file()]
    if missing and req.download:
        _fetch(req.name, tv_class.url, root, lambda: tv_utils.download_and_extract_archive(
            tv_class.url, str(root), filename=tv_class.filename, md5=tv_class.tgz_md5))
        directory = root / layout.folder
        missing = [f for f in layout.all_files if not (directory / f).is_file()]
    if missing:
        raise DatasetError(
            f"{req.name}: missing {', '.join(missing)} in {directory}. Set dataset.download=true "
            f"to download {tv_class.url} and extract it into {root}, or do that by hand.")
    return Plan(tuple(directory / f for f in layout.all_files),
                lambda: readers.read_cifar(directory, layout))


def _read_cifar_archive(req: Request, classes: tuple[str, ...]) -> Arrays:
    def read(folder: Path) -> Arrays:
        listing = images.list_image_splits(images.find_split_root(folder), classes)
        return images.decode_splits(listing, classes, "RGB", (32, 32))

    if req.cache_dir is not None:
        return read(images.extract_once(req.root, req.cache_dir / "extracted"))
    log.info("no cache_dir: extracting %s into a temporary folder for this load only", req.root)
    with tempfile.TemporaryDirectory() as tmp:
        return read(images.extract_once(req.root, Path(tmp)))


def _cifar_imagefolder(req: Request) -> Plan:
    root, classes = req.root, _cifar_layout(req.name).classes
    if root.is_file() and images.archive_stem(root) is not None:
        return Plan((root,), lambda: _read_cifar_archive(req, classes))
    if root.is_dir():
        listing = images.list_image_splits(images.find_split_root(root), classes)
        files = tuple(p for paths, _ in listing.values() for p in paths)
        return Plan(files, lambda: images.decode_splits(listing, classes, "RGB", (32, 32)))
    raise DatasetError(
        f"{root} is neither a folder with train/<class>/*.jpg and test/<class>/*.jpg nor a "
        f"{'/'.join(images.ARCHIVE_SUFFIXES)} archive of one. source=imagefolder has no "
        "download; for the official data set dataset.source=pickle dataset.download=true.")


def _idx(req: Request) -> Plan:
    import torchvision.datasets as tvd  # lazy: only needed to download

    folder, classes = readers.IDX_DATASETS[req.name]
    found = readers.find_idx_files(req.root, folder)
    if len(found) < len(readers.IDX_FILES) and req.download:
        tv_class = getattr(tvd, folder)
        _fetch(req.name, tv_class.mirrors[0], req.root,
               lambda: tv_class(str(req.root), train=True, download=True))
        found = readers.find_idx_files(req.root, folder)
    missing = [stem for stem in readers.IDX_FILES if stem not in found]
    if missing:
        debian = (" or install the Debian package dataset-fashion-mnist and set "
                  "dataset.root=/usr/share/datasets/fashion-mnist" if folder == "FashionMNIST"
                  else "")
        raise DatasetError(
            f"{req.name}: IDX files not found: {', '.join(missing)} (raw or .gz) in {req.root} "
            f"or {req.root / folder / 'raw'}. Set dataset.download=true to download them with "
            f"torchvision into {req.root / folder / 'raw'}{debian}.")
    files = tuple(found[stem] for stem in readers.IDX_FILES)

    def read() -> Arrays:
        train = readers.read_idx_split(files[0], files[1], len(classes))
        test = readers.read_idx_split(files[2], files[3], len(classes))
        return Arrays(*train, *test, classes)

    return Plan(files, read)


def _tinyimagenet_base(root: Path) -> Path | None:
    for candidate in (root / "tiny-imagenet-200", root):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def _tinyimagenet(req: Request) -> Plan:
    """Tiny ImageNet: classes are the wnids in sorted order (what torchvision's ImageFolder
    gives for train/), the test split is val/ labelled by val/val_annotations.txt; images are
    converted to RGB (some are grayscale)."""
    from torchvision.datasets import utils as tv_utils  # lazy: only needed to download

    base = _tinyimagenet_base(req.root)
    if base is None and req.download:
        _fetch(req.name, TINYIMAGENET_URL, req.root, lambda: tv_utils.download_and_extract_archive(
            TINYIMAGENET_URL, str(req.root), md5=TINYIMAGENET_MD5))
        base = _tinyimagenet_base(req.root)
    if base is None:
        raise DatasetError(
            f"tinyimagenet: no wnids.txt in {req.root / 'tiny-imagenet-200'} or {req.root}; "
            "expected the tiny-imagenet-200 layout (wnids.txt, train/<wnid>/images/*.JPEG, "
            "val/images/*.JPEG, val/val_annotations.txt). Set dataset.download=true to download "
            f"{TINYIMAGENET_URL} into {req.root}.")
    classes, train_paths, train_labels, val_paths, val_labels = images.tinyimagenet_listing(base)
    listing = {"train": (train_paths, train_labels), "test": (val_paths, val_labels)}
    files = (base / "wnids.txt", base / "val" / "val_annotations.txt", *train_paths, *val_paths)
    return Plan(files, lambda: images.decode_splits(listing, classes, "RGB", (64, 64)))


SOURCES_BY_NAME: dict[str, Spec] = {
    "cifar10": Spec({"pickle": _cifar_pickle, "imagefolder": _cifar_imagefolder}),
    "cifar100": Spec({"pickle": _cifar_pickle, "imagefolder": _cifar_imagefolder}),
    "mnist": Spec({"idx": _idx}),
    "fashion_mnist": Spec({"idx": _idx}),
    "tinyimagenet": Spec({"tinyimagenet": _tinyimagenet}),
    "digits": Spec({"sklearn": lambda req: Plan((), builtin.read_digits)}, uses_root=False),
    "synthetic": Spec(
        {"generated": lambda req: Plan((), lambda: builtin.make_synthetic(**req.options))},
        uses_root=False, options={"num_train": (512, 1), "num_test": (256, 1),
                                  "num_classes": (4, 2), "channels": (3, 1),
                                  "image_size": (16, 4), "seed": (0, 0)}),
}
