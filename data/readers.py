"""On-disk format readers used by :mod:`data.datasets`.

Every reader returns numpy arrays (images uint8 laid out (N, C, H, W), labels int64) and raises
:class:`DatasetError` naming the offending file when the data on disk is missing or malformed.
Nothing here knows about caching or downloading; :mod:`data.datasets` does that.
"""
from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import os
import pickle
import secrets
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger("data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine label ids are the alphabetical order of these names.
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())
assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)


class DatasetError(RuntimeError):
    """Data missing or malformed; the message says which files were expected where and how to
    get them."""


@dataclass(frozen=True)
class Arrays:
    """Decoded dataset content as numpy arrays (what the cache stores)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


# split name ("train"/"test") -> (image paths, label ids)
Listing = dict[str, tuple[list[Path], list[int]]]


# ----------------------------------------------------------------------------- CIFAR pickles

@dataclass(frozen=True)
class CifarLayout:
    """Where the python-pickle release of one CIFAR variant keeps what."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    classes: tuple[str, ...]

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR10_LAYOUT = CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                             ("test_batch",), "batches.meta", "labels", "label_names",
                             CIFAR10_CLASSES)
CIFAR100_LAYOUT = CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                              "fine_label_names", CIFAR100_CLASSES)


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def unpickle(path: Path) -> dict[str, object]:
    """Load one CIFAR pickle (trusted data: pickles can run code, as with torchvision).

    The originals were written by Python 2, so their keys are byte strings; latin1 is the
    encoding that also restores Python-2-pickled numpy arrays. Keys come back as ``str``.
    """
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # a truncated or foreign file can fail in many ways
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); "
                           "delete it and download the dataset again") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, expected a CIFAR batch dict")
    return {_text(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{path} lacks the keys 'data' and '{label_key}' "
                           f"(has {sorted(batch)}); is it the right CIFAR variant?")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max()
                                        < num_classes):
        raise DatasetError(f"{path}: '{label_key}' must hold {len(data)} ids in [0, {num_classes})")
    # Each row is the 32x32 red plane, then green, then blue, each row-major, so a plain
    # reshape gives (C, H, W).
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(directory: Path, layout: CifarLayout) -> Arrays:
    """Read a CIFAR-10/100 python release from ``directory`` (e.g. root/cifar-10-batches-py)."""
    meta_path = directory / layout.meta_file
    names = tuple(_text(n) for n in unpickle(meta_path).get(layout.names_key, ()))
    if names != layout.classes:
        raise DatasetError(f"{meta_path}: '{layout.names_key}' is {names[:5]}..., expected the "
                           f"canonical {layout.classes[:5]}...; is it the right CIFAR variant?")
    k = len(names)
    train = [_cifar_batch(directory / f, layout.label_key, k) for f in layout.train_files]
    test = [_cifar_batch(directory / f, layout.label_key, k) for f in layout.test_files]
    return Arrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                  np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test]),
                  names)


# ----------------------------------------------------------------------------- IDX (MNIST)

def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (raw, or gzip when the name ends in .gz) after checking its header."""
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DatasetError(f"{path}: IDX magic number is {found}, expected {magic} (an IDX "
                           f"{kind} file); the file is corrupt or not the {kind} file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DatasetError(f"{path}: {len(raw)} bytes but the header {dims} implies {expected}; "
                           "the file is truncated or corrupt, delete it and download again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# name -> (torchvision class, which is also torchvision's folder name under root; classes)
IDX_DATASETS = {"mnist": ("MNIST", MNIST_CLASSES),
                 "fashion_mnist": ("FashionMNIST", FASHION_MNIST_CLASSES)}


def find_idx_files(root: Path, folder: str) -> dict[str, Path]:
    """Map each of IDX_FILES found to its path, looking in ``root`` and then in torchvision's
    ``root/<folder>/raw``, raw before .gz."""
    found: dict[str, Path] = {}
    for base in (root, root / folder / "raw"):
        for stem in IDX_FILES:
            for candidate in (base / stem, base / f"{stem}.gz"):
                if stem not in found and candidate.is_file():
                    found[stem] = candidate
    return found


def read_idx_split(images: Path, labels: Path, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Read a 28x28 MNIST-style image file and its label file: (N, 1, 28, 28), (N,)."""
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC).astype(np.int64)
    if x.shape[1:] != (28, 28):
        raise DatasetError(f"{images}: images are {x.shape[1:]}, expected 28x28")
    if len(y) != len(x) or (y.size and y.max() >= num_classes):
        raise DatasetError(f"{labels}: expected {len(x)} labels in [0, {num_classes}) to match "
                           f"{images}, got {len(y)} (max {y.max() if y.size else None})")
    return x[:, None], y


# ----------------------------------------------------------------------------- image files

def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects cgroup/taskset limits on clusters
    except AttributeError:
        return os.cpu_count() or 1


def _decode_chunk(paths: Sequence[str], mode: str, size: tuple[int, int]) -> np.ndarray:
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot decode image {path}: {e}") from e
        if im.size != size:
            raise DatasetError(f"image {path} is {im.size[0]}x{im.size[1]}, expected "
                               f"{size[0]}x{size[1]}; images are not resized")
        pixels = np.asarray(im)
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def decode_images(paths: Sequence[Path], mode: str, size: tuple[int, int], *,
                  workers: int | None = None, chunk_size: int = 2000) -> np.ndarray:
    """Decode image files with PIL into uint8 (N, C, H, W); ``mode`` is 'RGB' or 'L' and
    ``size`` is (width, height), enforced exactly.

    Large lists are split into chunks decoded by a process pool (one worker per available CPU),
    which roughly divides the JPEG decoding time by the number of cores.
    """
    names = [str(p) for p in paths]
    workers = _available_cpus() if workers is None else workers
    # Daemonic processes (e.g. inside a multiprocessing pool) may not start children.
    if workers <= 1 or len(names) <= chunk_size or multiprocessing.current_process().daemon:
        return _decode_chunk(names, mode, size)
    chunks = [names[i:i + chunk_size] for i in range(0, len(names), chunk_size)]
    out = np.empty((len(names), 1 if mode == "L" else 3, size[1], size[0]), dtype=np.uint8)
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        for i, part in enumerate(pool.map(_decode_chunk, chunks, repeat(mode), repeat(size))):
            out[i * chunk_size:i * chunk_size + len(part)] = part
    return out


def _is_image(path: Path) -> bool:
    # Dot files include macOS "._x.jpg" resource forks that tar archives often carry.
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_image_folder(split_dir: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """List an ImageFolder split: classes are the sorted sub-folder names; samples are ordered
    class by class, and by relative path within a class (what torchvision's ImageFolder does)."""
    if not split_dir.is_dir():
        raise DatasetError(f"expected a folder {split_dir} holding one sub-folder per class")
    classes = tuple(sorted(d.name for d in split_dir.iterdir()
                           if d.is_dir() and not d.name.startswith(".")))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted((p for p in (split_dir / name).rglob("*") if _is_image(p) and p.is_file()),
                       key=lambda p: p.relative_to(split_dir).as_posix())
        if not files:
            raise DatasetError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {split_dir / name}")
        paths += files
        labels += [label] * len(files)
    if not classes:
        raise DatasetError(f"{split_dir} has no class sub-folders")
    return classes, paths, labels


def find_split_root(directory: Path) -> Path:
    """Return the folder holding train/ and test/: ``directory`` itself or its single
    sub-folder (the layout of an extracted archive)."""
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        return directory
    subdirs = [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    found = sorted(p.name for p in directory.iterdir())[:10]
    raise DatasetError(f"expected {directory}/train/<class>/*.jpg and {directory}/test/<class>/* "
                       f"(or a single folder containing train/ and test/); found {found}")


def list_image_splits(split_root: Path, expected: tuple[str, ...]) -> Listing:
    """List ``split_root/{train,test}``, whose class folders must be exactly ``expected`` (in
    sorted order), so that folder-derived label ids are the canonical ones."""
    listing = {}
    for split in ("train", "test"):
        found, paths, labels = list_image_folder(split_root / split)
        if found != expected:
            missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
            raise DatasetError(
                f"{split_root / split}: the class folders must be the canonical class names "
                f"{list(expected)} so that labels match the canonical ids; missing {missing}, "
                f"unexpected {extra}")
        listing[split] = (paths, labels)
    return listing


def decode_splits(listing: Listing, classes: tuple[str, ...], mode: str,
                  size: tuple[int, int]) -> Arrays:
    """Decode the images of a train/test listing (see decode_images for mode and size)."""
    (train_paths, train_labels), (test_paths, test_labels) = listing["train"], listing["test"]
    return Arrays(decode_images(train_paths, mode, size), np.array(train_labels, np.int64),
                  decode_images(test_paths, mode, size), np.array(test_labels, np.int64),
                  classes)


# ----------------------------------------------------------------------------- archives

def archive_stem(path: Path) -> str | None:
    """Name of ``path`` without its archive suffix, or None when it is not a tar archive."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[:-len(suffix)]
    return None


def _stamp(archive: Path) -> dict[str, object]:
    st = archive.stat()
    return {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_stamp(directory: Path) -> object:
    try:
        return json.loads((directory / ".extracted.json").read_text())
    except (OSError, ValueError):
        return None


def extract_once(archive: Path, parent: Path) -> Path:
    """Extract a tar archive into ``parent/<archive stem>/`` unless already done for this very
    archive (same path, size and mtime), and return that folder.

    Extraction goes to a temporary sibling that is renamed into place only once complete and
    stamped, so an interrupted run never leaves a folder that looks finished.
    """
    final = parent / str(archive_stem(archive))
    stamp = _stamp(archive)
    if _read_stamp(final) == stamp:
        return final
    tmp = parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    tmp.mkdir(parents=True)  # not mkdtemp: that ignores the umask (0700), this honours it
    try:
        log.info("extracting %s into %s", archive, final)
        try:
            with tarfile.open(archive, "r:*") as tar:
                # The "data" filter refuses absolute paths, ../ escapes and device files; it
                # exists from Python 3.10.12 / 3.11.4 on.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, **safe)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"cannot extract {archive}: {e}") from e
        (tmp / ".extracted.json").write_text(json.dumps(stamp))
        if final.exists():  # stale (other archive version) or half-written by an old version
            stale = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if _read_stamp(final) != stamp:  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- Tiny ImageNet

def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e}") from e


def tinyimagenet_listing(base: Path) -> tuple[tuple[str, ...], list[Path], list[int],
                                                  list[Path], list[int]]:
    """List the tiny-imagenet-200 tree at ``base``: (classes, train paths, train labels,
    val paths, val labels). Classes are the sorted wnids; val labels come from
    val/val_annotations.txt and val images are ordered by file name."""
    wnids = [line.strip() for line in _read_lines(base / "wnids.txt") if line.strip()]
    classes = tuple(sorted(set(wnids)))
    if len(classes) != len(wnids):
        raise DatasetError(f"{base / 'wnids.txt'} lists some wnids twice")
    index = {w: i for i, w in enumerate(classes)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in classes:
        folder = base / "train" / wnid / "images"
        files = sorted(p for p in folder.glob("*") if _is_image(p)) if folder.is_dir() else []
        if not files:
            raise DatasetError(f"no training images in {folder} (class {wnid} from wnids.txt)")
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    val_file = base / "val" / "val_annotations.txt"
    annotations: dict[str, int] = {}
    for n, line in enumerate(_read_lines(val_file), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{val_file} line {n}: expected 'file<TAB>wnid<TAB>box', with a "
                               f"wnid from wnids.txt; got {line!r}")
        annotations[fields[0]] = index[fields[1]]
    val_names = sorted(annotations)
    val_paths = [base / "val" / "images" / name for name in val_names]
    missing = [str(p) for p in val_paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} validation images listed in {val_file} are missing, "
                           f"e.g. {missing[:3]}")
    if not val_paths:
        raise DatasetError(f"{val_file} lists no images")
    return classes, train_paths, train_labels, val_paths, [annotations[n] for n in val_names]
