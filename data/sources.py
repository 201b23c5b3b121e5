"""Where each dataset's files are and how they decode: one reader function per on-disk format
(it finds the files, downloading them with torchvision when asked, and returns a `Plan` of the
files and a function that decodes them) and `SOURCES_BY_NAME`, each dataset name's formats
(the first is what `source="auto"` picks). Adding a dataset in a new format is adding a reader
and its entry here; `data.datasets.load` does the rest (options, the decoded-array cache)."""
from __future__ import annotations

import logging
import numbers
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import builtin, images, readers
from .readers import Arrays, DatasetError

log = logging.getLogger("data")

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


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
    if not root.exists():
        raise DatasetError(
            f"{root} not found: source=imagefolder reads a folder with train/<class>/*.jpg and "
            f"test/<class>/*.jpg or a {'/'.join(images.ARCHIVE_SUFFIXES)} archive of one (the "
            "offline CIFAR-10 copy is ../shared/data/cifar10-jpeg.tar.gz beside the repository; "
            "dataset.root=PATH or CIFAR10_JPEG=PATH points elsewhere), and has no download; for "
            "the official data set dataset.source=pickle dataset.download=true.")
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
