"""data.datasets on image-file sources (Tiny ImageNet, ImageFolder dirs and archives), in the
real on-disk layouts, and on the CIFAR-10 JPEG copy in ../shared/data when it is there."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data import datasets, images
from data.datasets import DatasetError

try:
    from . import fixtures_formats as ff  # when tests/ is a package
except ImportError:
    import fixtures_formats as ff

# The checkout sits beside shared/ (locally and in CI).
SHARED_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


# ----------------------------------------------------------------------------- Tiny ImageNet

@pytest.mark.parametrize("nested", [True, False])
def test_tinyimagenet_layout(tmp_path: Path, nested: bool) -> None:
    base = tmp_path / "tiny-imagenet-200" if nested else tmp_path
    wnids = ["n09999999", "n01443537", "n02085620"]  # wnids.txt order is not label order
    expected = ff.write_tinyimagenet(base, wnids)
    ds = datasets.load("tinyimagenet", root=tmp_path)
    assert ds.classes == tuple(sorted(wnids)) and ds.shape == (3, 64, 64)
    assert ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (3, 3, 64, 64)
    # Train: class by class in sorted wnid order, files sorted; test: val_*.JPEG by name.
    train_rel = [f"train/{w}/images/{w}_{i}.JPEG" for w in sorted(wnids) for i in range(2)]
    val_rel = [f"val/images/val_{k}.JPEG" for k in range(3)]
    for x, y, rels in ((ds.train_x, ds.train_y, train_rel), (ds.test_x, ds.test_y, val_rel)):
        for i, rel in enumerate(rels):
            pixels, wnid = expected[rel]
            assert np.array_equal(x[i].numpy(), pixels), rel  # incl. grayscale -> RGB
            assert ds.classes[int(y[i])] == wnid


def test_tinyimagenet_missing_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="wnids.txt.*tiny-imagenet-200.zip"):
        datasets.load("tinyimagenet", root=tmp_path)


def test_tinyimagenet_download_goes_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, md5))
        ff.write_tinyimagenet(Path(download_root) / "tiny-imagenet-200", ["n01", "n02"])

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    ds = datasets.load("tinyimagenet", root=tmp_path, download=True)
    assert calls == [("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                      "90528d7ca1a48142e341f4ef8d21d0de")]
    assert ds.classes == ("n01", "n02") and len(ds.test_y) == 2


def test_tinyimagenet_unknown_val_wnid_raises(tmp_path: Path) -> None:
    ff.write_tinyimagenet(tmp_path, ["n01", "n02"])
    with open(tmp_path / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="val_annotations.txt line 3"):
        datasets.load("tinyimagenet", root=tmp_path)


# ----------------------------------------------------------------------------- ImageFolder

def check_folder_dataset(ds: datasets.Dataset, expected: dict) -> None:
    assert ds.classes == tuple(ff.CIFAR10_NAMES) and ds.shape == (3, 32, 32)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        assert len(x) == len(expected[split])
        for i, (name, pixels) in enumerate(expected[split]):
            assert np.array_equal(x[i].numpy(), pixels)
            assert int(y[i]) == ff.CIFAR10_NAMES.index(name)  # canonical CIFAR-10 ids


def test_imagefolder_directory_and_archive_agree(tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "cifar10-png"
    expected = ff.write_image_folder(tree, ff.CIFAR10_NAMES, train=2, test=1)
    from_dir = datasets.load("cifar10", root=tree, source="imagefolder")
    check_folder_dataset(from_dir, expected)
    archive = ff.make_tar(tree, tmp_path / "cifar10-png.tar.gz")
    cache = tmp_path / "cache"
    from_tar = datasets.load("cifar10", root=archive, source="imagefolder", cache_dir=cache)
    ff.assert_same(from_dir, from_tar)
    extracted = cache / "extracted" / "cifar10-png"
    assert (extracted / "cifar10-png" / "train" / "cat" / "0001.png").is_file()
    assert [p.name for p in (cache / "extracted").iterdir()] == ["cifar10-png"]  # no temp dirs
    # The parent folder of the tree also works (single top folder holding train/ and test/).
    ff.assert_same(datasets.load("cifar10", root=tmp_path / "cache" / "extracted" / "cifar10-png",
                              source="imagefolder"), from_dir)
    ff.forbid(monkeypatch, images, "decode_images", "extract_once")
    ff.assert_same(datasets.load("cifar10", root=archive, source="imagefolder", cache_dir=cache),
                from_dir)


def test_archive_reextracts_over_a_half_written_folder(tmp_path: Path) -> None:
    tree = tmp_path / "pics"
    expected = ff.write_image_folder(tree, ff.CIFAR10_NAMES, train=1, test=1)
    archive = ff.make_tar(tree, tmp_path / "pics.tgz")
    junk = tmp_path / "cache" / "extracted" / "pics"
    (junk / "pics" / "train" / "cat").mkdir(parents=True)  # e.g. from a killed older version
    ds = datasets.load("cifar10", root=archive, source="imagefolder", cache_dir=tmp_path / "cache")
    check_folder_dataset(ds, expected)
    assert (junk / ".extracted.json").is_file()


def test_imagefolder_archive_without_cache_dir(tmp_path: Path) -> None:
    tree = tmp_path / "pics"
    expected = ff.write_image_folder(tree, ff.CIFAR10_NAMES, train=1, test=1)
    archive = ff.make_tar(tree, tmp_path / "pics.tar.gz")
    check_folder_dataset(datasets.load("cifar10", root=archive, source="imagefolder"), expected)


def test_imagefolder_new_file_invalidates_cache(tmp_path: Path) -> None:
    tree = tmp_path / "pics"
    ff.write_image_folder(tree, ff.CIFAR10_NAMES, train=1, test=1)
    cache = tmp_path / "cache"
    first = datasets.load("cifar10", root=tree, source="imagefolder", cache_dir=cache)
    ff.save_image(tree / "train" / "dog" / "0005.png", np.zeros((32, 32, 3), np.uint8))
    second = datasets.load("cifar10", root=tree, source="imagefolder", cache_dir=cache)
    assert len(second.train_y) == len(first.train_y) + 1 and len(ff.cache_files(cache)) == 2


def test_imagefolder_wrong_class_folders_raise(tmp_path: Path) -> None:
    names = ["plane" if n == "airplane" else n for n in ff.CIFAR10_NAMES]
    ff.write_image_folder(tmp_path, names, train=1, test=1)
    with pytest.raises(DatasetError, match=r"missing \['airplane'\], unexpected \['plane'\]"):
        datasets.load("cifar10", root=tmp_path, source="imagefolder")


def test_imagefolder_wrong_image_size_names_the_file(tmp_path: Path) -> None:
    ff.write_image_folder(tmp_path, ff.CIFAR10_NAMES, train=1, test=1)
    ff.save_image(tmp_path / "test" / "ship" / "0000.png", np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"ship/0000.png is 28x28, expected 32x32"):
        datasets.load("cifar10", root=tmp_path, source="imagefolder")


def test_imagefolder_missing_root_explains(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train/<class>.*source=pickle"):
        datasets.load("cifar10", root=tmp_path / "nope.tar.gz", source="imagefolder")


def test_parallel_decode_matches_serial(tmp_path: Path) -> None:
    expected = ff.write_image_folder(tmp_path, ["a", "b"], train=5, test=1, size=8)
    _, paths, _ = images.list_image_folder(tmp_path / "train")
    parallel = images.decode_images(paths, "RGB", (8, 8), workers=2, chunk_size=3)
    serial = images.decode_images(paths, "RGB", (8, 8), workers=1)
    assert np.array_equal(parallel, serial)
    assert np.array_equal(serial, np.stack([p for _, p in expected["train"]]))
    gray = images.decode_images(paths[:2], "L", (8, 8))
    assert gray.shape == (2, 1, 8, 8) and gray.dtype == np.uint8


# ----------------------------------------------------------------------------- real data

@pytest.mark.slow
@pytest.mark.skipif(not SHARED_JPEG.exists(), reason=f"{SHARED_JPEG} not present")
def test_shared_cifar10_jpeg_archive(tmp_path: Path) -> None:
    start = time.perf_counter()
    ds = datasets.load("cifar10", root=SHARED_JPEG, source="imagefolder", cache_dir=tmp_path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = datasets.load("cifar10", root=SHARED_JPEG, source="imagefolder", cache_dir=tmp_path)
    cached = time.perf_counter() - start
    print(f"\ncifar10-jpeg: first load (extract + decode + cache) {first:.1f}s, "
          f"cached load {cached:.2f}s")
    assert (len(ds.train_y), len(ds.test_y)) == (50_000, 10_000) and ds.shape == (3, 32, 32)
    assert ds.train_y.bincount().tolist() == [5000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10
    mean = ds.train_x.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.489, 0.481, 0.447], dtype=torch.float64),
                          atol=0.01)
    assert again.fingerprint == ds.fingerprint
