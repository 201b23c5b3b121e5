"""data.datasets on fixture files written in the real on-disk formats."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data import datasets, readers
from data.datasets import DatasetError

try:
    from . import fixtures_formats as ff  # when tests/ is a package
except ImportError:
    import fixtures_formats as ff



# ----------------------------------------------------------------------------- CIFAR pickles

@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_pickle_decodes_planes_to_chw(tmp_path: Path, style: str) -> None:
    raw = ff.write_cifar(tmp_path, "cifar10", per_batch=5, style=style)
    ds = datasets.load("cifar10", root=tmp_path)
    assert ds.train_x.shape == (25, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_x.is_contiguous() and ds.shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.classes == tuple(ff.CIFAR10_NAMES)
    # Row layout: 1024 red values, then green, then blue, each plane row by row.
    row = raw["train_rows"][7]
    for c, h, w in [(0, 0, 0), (0, 0, 31), (1, 2, 5), (2, 31, 0), (2, 17, 30)]:
        assert ds.train_x[7, c, h, w] == row[1024 * c + 32 * h + w]
    assert np.array_equal(ds.test_x.numpy().reshape(5, -1), raw["test_rows"])
    assert ds.train_y.tolist() == raw["train_labels"].tolist()  # batches 1..5 in order
    assert ds.test_y.tolist() == raw["test_labels"].tolist()


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_pickle_matches_torchvision_reader(tmp_path: Path, monkeypatch, variant) -> None:
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    ff.write_cifar(tmp_path, variant, names=list(readers.CIFAR100_CLASSES)
                   if variant == "cifar100" else None)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fixture md5s
    ds = datasets.load(variant, root=tmp_path)
    tv_class = tvd.CIFAR10 if variant == "cifar10" else tvd.CIFAR100
    for train, x, y in ((True, ds.train_x, ds.train_y), (False, ds.test_x, ds.test_y)):
        reference = tv_class(str(tmp_path), train=train)
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), reference.data)  # torchvision: HWC
        assert y.tolist() == list(reference.targets)
        assert ds.classes == tuple(reference.classes)


def test_cifar100_uses_fine_labels_and_names(tmp_path: Path) -> None:
    raw = ff.write_cifar(tmp_path, "cifar100", names=list(readers.CIFAR100_CLASSES))
    ds = datasets.load("cifar100", root=tmp_path, source="pickle")
    assert ds.num_classes == 100 and ds.train_x.shape == (25, 3, 32, 32)
    # Spot checks against the published CIFAR-100 fine label ids.
    assert (ds.classes[0], ds.classes[30], ds.classes[53], ds.classes[99]) == \
        ("apple", "dolphin", "orange", "worm")
    assert ds.train_y.tolist() == raw["train_labels"].tolist()
    assert np.array_equal(ds.train_x.numpy().reshape(25, -1), raw["train_rows"])


def test_cifar_wrong_meta_names_raise(tmp_path: Path) -> None:
    ff.write_cifar(tmp_path, "cifar10", names=[f"c{i}" for i in range(10)])
    with pytest.raises(DatasetError, match="batches.meta"):
        datasets.load("cifar10", root=tmp_path)


def test_cifar_missing_files_name_them(tmp_path: Path) -> None:
    ff.write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as err:
        datasets.load("cifar10", root=tmp_path)
    msg = str(err.value)
    assert "data_batch_4" in msg and "data_batch_1" not in msg and "dataset.download=true" in msg
    with pytest.raises(DatasetError) as err:
        datasets.load("cifar100", root=tmp_path / "empty")
    assert all(f in str(err.value) for f in ("train", "test", "meta", "cifar-100-python.tar.gz"))


def test_cifar_download_goes_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename, md5))
        ff.write_cifar(Path(download_root), "cifar10")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    ds = datasets.load("cifar10", root=tmp_path, download=True)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    assert len(ds.train_y) == 25
    datasets.load("cifar10", root=tmp_path, download=True)  # files present: no new download
    assert len(calls) == 1


def test_download_failure_is_a_dataset_error(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match="cs.toronto.edu.*Network is unreachable"):
        datasets.load("cifar10", root=tmp_path, download=True)


# ----------------------------------------------------------------------------- fingerprint + cache

def test_fingerprint_stable_and_sensitive_to_one_pixel(tmp_path: Path) -> None:
    ff.write_cifar(tmp_path, "cifar10")
    first = datasets.load("cifar10", root=tmp_path)
    assert datasets.load("cifar10", root=tmp_path).fingerprint == first.fingerprint
    assert len(first.fingerprint) == 64
    ff.write_cifar(tmp_path, "cifar10")  # same seed: identical content rewritten
    assert datasets.load("cifar10", root=tmp_path).fingerprint == first.fingerprint
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch = readers.unpickle(path)
    batch["data"][2, 100] ^= 1
    ff.dump_pickle(path, {k.encode(): v for k, v in batch.items()}, "py3")
    changed = datasets.load("cifar10", root=tmp_path)
    assert changed.fingerprint != first.fingerprint
    assert int((changed.train_x != first.train_x).sum()) == 1


def test_second_load_is_a_cache_hit(tmp_path: Path, monkeypatch, caplog) -> None:
    ff.write_cifar(tmp_path / "data", "cifar10")
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="data")
    first = datasets.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    assert len(ff.cache_files(cache)) == 1 and "cache miss" in caplog.text
    caplog.clear()
    ff.forbid(monkeypatch, readers, "read_cifar", "unpickle")
    second = datasets.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    assert "cache hit" in caplog.text
    ff.assert_same(first, second)
    assert ff.cache_files(cache)[0].name.startswith("cifar10-pickle-")
    assert not [p for p in (cache / "datasets").iterdir() if p.suffix != ".npz"]  # no temp files


def test_touched_source_file_invalidates_cache(tmp_path: Path, monkeypatch) -> None:
    ff.write_cifar(tmp_path / "data", "cifar10")
    cache = tmp_path / "cache"
    first = datasets.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    st = batch.stat()
    os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    reads = []
    real = readers.read_cifar
    monkeypatch.setattr(readers, "read_cifar", lambda *a: reads.append(a) or real(*a))
    second = datasets.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    assert len(reads) == 1 and len(ff.cache_files(cache)) == 2
    ff.assert_same(first, second)  # same bytes, only the mtime changed


def test_truncated_cache_is_rebuilt(tmp_path: Path, caplog) -> None:
    cache = tmp_path / "cache"
    first = datasets.load("synthetic", root=None, cache_dir=cache)
    [path] = ff.cache_files(cache)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="data")
    second = datasets.load("synthetic", root=None, cache_dir=cache)
    assert any(r.levelno == logging.WARNING and "unreadable" in r.getMessage()
               for r in caplog.records)
    ff.assert_same(first, second)
    caplog.clear()
    ff.assert_same(datasets.load("synthetic", root=None, cache_dir=cache), first)
    assert "cache hit" in caplog.text


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_idx_raw_and_gz(tmp_path: Path, gz: bool, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = ff.write_mnist(folder, gz=gz)
    ds = datasets.load("mnist", root=tmp_path)
    assert ds.shape == (1, 28, 28) and ds.train_x.shape == (6, 1, 28, 28)
    assert ds.classes == tuple("0123456789")
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    ff.write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = datasets.load("fashion_mnist", root=tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.test_x.shape == (4, 1, 28, 28)


def test_idx_bad_magic_names_the_file(tmp_path: Path) -> None:
    ff.write_mnist(tmp_path, gz=False)
    labels = np.zeros(4, np.uint8)
    # A labels file where the test images file should be: magic 2049, not 2051.
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(ff.idx_bytes(labels))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.*magic.*2049.*2051"):
        datasets.load("mnist", root=tmp_path)


def test_idx_truncated_file_raises(tmp_path: Path) -> None:
    ff.write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    import gzip
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        datasets.load("mnist", root=tmp_path)


def test_idx_missing_files_are_named(tmp_path: Path) -> None:
    ff.write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as err:
        datasets.load("mnist", root=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "dataset.download=true" in str(err.value)
    assert "train-images" not in str(err.value)


def test_mnist_download_uses_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    class FakeMNIST:
        mirrors = tvd.MNIST.mirrors

        def __init__(self, root, train, download):
            assert download and train
            ff.write_mnist(Path(root) / "MNIST" / "raw", gz=True)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    assert datasets.load("mnist", root=tmp_path, download=True).train_x.shape == (6, 1, 28, 28)


# ----------------------------------------------------------------------------- digits, synthetic

def test_digits_split(tmp_path: Path) -> None:
    ds = datasets.load("digits", root=tmp_path / "ignored")
    assert (len(ds.train_y), len(ds.test_y)) == (1437, 360)
    assert ds.shape == (1, 8, 8) and ds.train_x.dtype == torch.uint8
    assert ds.classes == tuple("0123456789")
    assert int(ds.train_x.min()) == 0 and int(ds.train_x.max()) == 255
    values = set(torch.cat([ds.train_x, ds.test_x]).unique().tolist())
    assert values == {round(v * 255 / 16) for v in range(17)}  # the 17 levels 0..16, scaled
    assert set(ds.train_y.tolist()) == set(ds.test_y.tolist()) == set(range(10))
    assert datasets.load("digits", root=None).fingerprint == ds.fingerprint


def test_synthetic_options_determinism_and_difficulty() -> None:
    ds = datasets.load("synthetic", root=None)
    assert ds.train_x.shape == (512, 3, 16, 16) and ds.test_x.shape == (256, 3, 16, 16)
    assert ds.num_classes == 4 and ds.train_y.bincount().tolist() == [128] * 4
    assert datasets.load("synthetic", root=None, seed=0).fingerprint == ds.fingerprint
    assert datasets.load("synthetic", root=None, seed=1).fingerprint != ds.fingerprint
    small = datasets.load("synthetic", root=None, num_train=30, num_test=20, num_classes=3,
                          channels=1, image_size=8, seed=2)
    assert small.train_x.shape == (30, 1, 8, 8) and small.num_classes == 3
    # Class-conditional but noisy: nearest class mean is well above chance (25%), not perfect.
    x_train = ds.train_x.flatten(1).double()
    means = torch.stack([x_train[ds.train_y == k].mean(0) for k in range(4)])
    predicted = torch.cdist(ds.test_x.flatten(1).double(), means).argmin(1)
    accuracy = (predicted == ds.test_y).double().mean().item()
    assert 0.45 < accuracy < 0.95


# ----------------------------------------------------------------------------- argument errors

@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cifar11"), "valid names: cifar10, cifar100, mnist"),
    (dict(name="mnist", source="pickle"), "valid sources: auto, idx"),
    (dict(name="synthetic", num_classes=1), "num_classes=1 must be an integer >= 2"),
    (dict(name="synthetic", seed="0"), "seed='0' must be an integer"),
    (dict(name="synthetic", size=3), r"unknown option\(s\) \['size'\].*image_size"),
    (dict(name="digits", num_train=5), "valid options: none"),
    (dict(name="cifar10", root=None), "needs a root"),
])
def test_bad_arguments_list_valid_choices(tmp_path: Path, kwargs: dict, match: str) -> None:
    kwargs.setdefault("root", tmp_path)
    with pytest.raises(DatasetError, match=match):
        datasets.load(**kwargs)


def test_one_layout_whatever_the_source():
    """One-channel images decoded from (N, H, W, 1) have strides that torch also reads as
    channels_last; a Dataset stores them in the standard layout, as the dataset cache loads them,
    so a run on freshly decoded data trains and infers exactly like a rerun from the cache."""
    from data.dataset import Dataset, fingerprint_of

    hwc = torch.arange(2 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8)
    x = hwc.reshape(2, 8, 8, 1).permute(0, 3, 1, 2)
    assert x.is_contiguous() and x.stride() == (64, 1, 8, 1)
    y = torch.tensor([0, 1])
    ds = Dataset("t", x, y, x.clone(), y.clone(), classes=("a", "b"),
                 fingerprint=fingerprint_of(x, y, x, y))
    assert ds.train_x.stride() == ds.test_x.stride() == (64, 64, 8, 1)
    assert torch.equal(ds.train_x, x)
