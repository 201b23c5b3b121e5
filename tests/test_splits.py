import numpy as np
import pytest
from omegaconf import OmegaConf

from data.splits import SplitError, class_forget, index_digest, make_split, random_forget


@pytest.mark.parametrize("n_train,count,seed", [(50000, 5000, 1), (50000, 25000, 10),
                                               (1437, 144, 100), (10, 1, 0)])
def test_random_forget_reproduces_the_papers_numpy_draw(n_train, count, seed):
    np.random.seed(seed)
    expected = np.random.choice(n_train, count, replace=False)
    split = random_forget(n_train, seed=seed, count=count)
    np.testing.assert_array_equal(split.forget_idx, expected)


def test_fraction_gives_rounded_count_and_a_partition():
    split = random_forget(1437, seed=1, fraction=0.1)
    assert len(split.forget_idx) == 144
    assert len(np.unique(split.forget_idx)) == 144
    both = np.concatenate([split.forget_idx, split.retain_idx])
    np.testing.assert_array_equal(np.sort(both), np.arange(1437))
    assert np.all(np.diff(split.retain_idx) > 0)


def test_random_forget_leaves_numpy_global_state_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    random_forget(100, seed=5, count=10)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_class_forget_takes_every_sample_of_the_class():
    y = np.array([0, 1, 2, 1, 1, 0])
    split = class_forget(y, 1, num_classes=3)
    np.testing.assert_array_equal(split.forget_idx, [1, 3, 4])
    np.testing.assert_array_equal(split.retain_idx, [0, 2, 5])
    assert split.kind == "class" and split.class_id == 1


@pytest.mark.parametrize("kwargs", [dict(fraction=1.5), dict(fraction=0.0), dict(count=100),
                                    dict(count=0), dict(fraction=0.1, count=3), dict()])
def test_bad_random_specs_fail_clearly(kwargs):
    with pytest.raises(SplitError, match="forget"):
        random_forget(100, seed=1, **kwargs)


def test_bad_class_fails_clearly():
    with pytest.raises(SplitError, match=r"class_id must lie in \[0, 9\], got 42"):
        class_forget(np.arange(10), 42, num_classes=10)


def test_make_split_from_config_and_digest_is_order_free():
    spec = OmegaConf.create({"kind": "random", "fraction": None, "count": 7, "seed": 3})
    split = make_split(spec, np.zeros(50, dtype=np.int64), 10)
    assert index_digest(split.forget_idx) == index_digest(split.forget_idx[::-1])
    assert index_digest(split.forget_idx) != index_digest(split.forget_idx[1:])


def test_an_indices_file_is_read_in_its_order(tmp_path):
    from data.splits import indices_forget, read_indices
    np.save(tmp_path / "f.npy", np.array([7, 2, 5], dtype=np.int32))
    (tmp_path / "f.txt").write_text("7 2\n5\n")
    (tmp_path / "f.csv").write_text("index\n7\n2\n5\n")
    for name in ("f.npy", "f.txt", "f.csv"):
        idx = read_indices(tmp_path / name)
        assert idx.dtype == np.int64 and idx.tolist() == [7, 2, 5], name
    split = indices_forget(10, read_indices(tmp_path / "f.npy"), "f.npy")
    assert split.kind == "indices" and split.forget_idx.tolist() == [7, 2, 5]
    assert split.retain_idx.tolist() == [0, 1, 3, 4, 6, 8, 9]
    with pytest.raises(SplitError, match="index 7 is out of range for a training set of 6"):
        indices_forget(6, read_indices(tmp_path / "f.npy"), "f.npy")


@pytest.mark.parametrize("name,content,message", [
    ("f.txt", "", "lists no index"),
    ("f.txt", "3 1 3", "index 3 is listed 2 times"),
    ("f.txt", "3 -1", "index -1 is negative"),
    ("f.txt", "3 1.5", "'1.5' is not an integer index"),
    ("f.csv", "3,4\n5,6\n", "one column"),
    ("f.json", "[1, 2]", "must be .npy, .csv, .txt"),
    ("f.npy", np.array([1.0, 2.0]), "float64 values; indices must be integers"),
    ("missing.npy", None, "no such file"),
])
def test_a_bad_indices_file_is_one_error_naming_forget_path(tmp_path, name, content, message):
    from data.splits import read_indices
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SplitError, match=message) as info:
        read_indices(path)
    assert str(info.value).startswith(f"forget.path={path}")
