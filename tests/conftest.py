"""Shared fixtures: composing the real config tree, with the cache and outputs in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# Small enough for a 2-core CPU, large enough to learn digits (about 95% test accuracy).
FAST = ["logger=none", "train.epochs=8", "device=cpu", "figures=false"]  # figures: test_figures


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) against conf/, with paths pointing into this test's tmp dir."""

    def _make(*overrides: str, cache_dir: Path | None = None):
        paths = [f"paths.cache_dir={cache_dir or tmp_path / 'cache'}",
                 f"paths.data_dir={tmp_path / 'datasets'}"]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[*paths, *overrides])

    return _make


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    os.environ.pop("WANDB_API_KEY", None)
