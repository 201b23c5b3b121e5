"""On-disk format readers for CIFAR pickles and IDX files, used by :mod:`data.datasets`
(image files and archives are in :mod:`data.images`).

Every reader returns numpy arrays (images uint8 laid out (N, C, H, W), labels int64) and raises
:class:`DatasetError` naming the offending file when the data on disk is missing or malformed.
Nothing here knows about caching or downloading; :mod:`data.datasets` does that.
"""
from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("data")

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
