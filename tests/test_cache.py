import logging

import pytest
import torch

from runner.cache import Cache, key_of, load_model, save_model


def _writer(calls, value=1.0):
    def write(directory):
        calls.append(directory)
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, value)
        save_model(directory, model)
    return write


def test_key_depends_on_content_not_order():
    a = {"model": {"width": 32, "depth": 3}, "seed": 1}
    b = {"seed": 1, "model": {"depth": 3, "width": 32}}
    assert key_of(a) == key_of(b)
    assert key_of(a) != key_of({**a, "seed": 2})
    assert key_of(a) != key_of({**a, "model": {"width": 33, "depth": 3}})


def test_second_get_is_a_hit_and_builds_nothing(tmp_path):
    cache, calls = Cache(tmp_path), []
    p1, k1, hit1 = cache.get_or_build("original", {"s": 1}, _writer(calls))
    p2, k2, hit2 = cache.get_or_build("original", {"s": 1}, _writer(calls))
    assert (hit1, hit2) == (False, True) and len(calls) == 1 and p1 == p2 and k1 == k2
    assert not [p for p in (tmp_path / "original").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_is_reported_and_rebuilt(tmp_path, caplog, damage):
    cache, calls = Cache(tmp_path), []
    path, _, _ = cache.get_or_build("original", {"s": 1}, _writer(calls))
    ckpt = path / "model.pt"
    data = ckpt.read_bytes()
    if damage == "truncate":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        ckpt.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        ckpt.unlink()
    with caplog.at_level(logging.WARNING, logger="runner.cache"):
        path2, _, hit = cache.get_or_build("original", {"s": 1}, _writer(calls))
    assert not hit and len(calls) == 2
    assert "corrupt" in caplog.text
    model = load_model(path2, torch.nn.Linear(3, 2))
    assert torch.all(model.weight == 1.0)


def test_losing_a_build_race_keeps_the_winners_copy(tmp_path):
    # Without locks (a filesystem that has none), two jobs can build the same key at once.
    cache, calls = Cache(tmp_path, locks=False), []

    def slow_writer(directory):
        # Another job finishes the same key while this one is still writing.
        Cache(tmp_path, locks=False).get_or_build("original", {"s": 1}, _writer([], value=2.0))
        _writer(calls, value=3.0)(directory)

    path, _, hit = cache.get_or_build("original", {"s": 1}, slow_writer)
    assert not hit
    assert torch.all(load_model(path, torch.nn.Linear(3, 2)).weight == 2.0)
    assert [p.name for p in (tmp_path / "original").iterdir()] == [path.name]


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "a"
    path.mkdir()
    torch.save({"weight": print}, path / "model.pt")  # a pickled callable, not weights
    with pytest.raises(Exception):
        load_model(path, torch.nn.Linear(3, 2))


def test_code_fingerprint_follows_code_not_comments(tmp_path):
    from runner.cache import code_fingerprint
    f = tmp_path / "m.py"
    f.write_text('"""Doc."""\ndef g(x):\n    """Doc."""\n    return x * 2\n')
    base = code_fingerprint([f])
    f.write_text('"""Other doc."""\n# a comment\ndef g(x):\n    """Changed."""\n    return x * 2\n')
    assert code_fingerprint([f]) == base
    f.write_text('"""Doc."""\ndef g(x):\n    """Doc."""\n    return x / 2\n')
    assert code_fingerprint([f]) != base


def test_the_training_fingerprint_covers_every_file_a_training_runs():
    """Editing any of them changes every trained model's key (no stale model is reused)."""
    from runner.trained import REPO, TRAINING_FILES

    names = {str(p.relative_to(REPO)) for p in TRAINING_FILES}
    assert {"models/build.py", "models/spectral.py", "models/fastclip.py", "runner/train.py",
            "runner/optim.py", "runner/hooks.py", "runner/recipe.py", "runner/checkpoint.py",
            "data/loader.py"} <= names
