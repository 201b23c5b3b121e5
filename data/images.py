"""Image-file sources: decoding with PIL (in worker processes for long lists), ImageFolder
listings, archives extracted once, and the Tiny ImageNet layout. Used by :mod:`data.datasets`."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import secrets
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .readers import Arrays, DatasetError

log = logging.getLogger("data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")

# split name ("train"/"test") -> (image paths, label ids)
Listing = dict[str, tuple[list[Path], list[int]]]


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
