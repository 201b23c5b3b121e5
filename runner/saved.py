"""The unlearned model a run leaves in its run dir, for a researcher's own analysis.

`unlearned.pt` is its state dict (load it with `torch.load(..., weights_only=True)`) and
`unlearned.yaml` the resolved `model` and `dataset` config nodes that rebuild its architecture
(`models.build.build_model`). `load(run_dir)` does both. The original and the oracle are not
copied: metrics.json's `models` names their files in the cache.

The other way in: `original.checkpoint=PATH`, a state dict of the configured architecture used as
the original instead of training one (`read_state` checks it before any data loads).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from models.build import build_model

WEIGHTS, ARCHITECTURE = "unlearned.pt", "unlearned.yaml"


def save(run_dir: Path, model: torch.nn.Module, cfg: DictConfig) -> Path:
    """Write the model's weights and architecture config into run_dir; returns the weights file."""
    OmegaConf.save(OmegaConf.create({"model": OmegaConf.to_container(cfg.model, resolve=True),
                                     "dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}),
                   run_dir / ARCHITECTURE)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = run_dir / f"{WEIGHTS}.tmp"
    torch.save(state, tmp)
    tmp.replace(run_dir / WEIGHTS)
    return run_dir / WEIGHTS


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The unlearned model of the run in `run_dir`, rebuilt and loaded, in eval mode."""
    run_dir = Path(run_dir)
    spec = OmegaConf.load(run_dir / ARCHITECTURE)
    model = build_model(spec.model, spec.dataset).to(device)
    model.load_state_dict(torch.load(run_dir / WEIGHTS, map_location=device, weights_only=True))
    return model.eval()


def read_state(path: str | Path, model: torch.nn.Module, where: str) -> dict:
    """The state dict in `path`, checked against `model`'s (the configured architecture): a
    ConfigError naming `where` if the file is missing or unreadable, a key is missing or extra, or
    a tensor's shape differs (the first such parameter and both shapes)."""
    from runner.typed import ConfigError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or pickled code
        raise ConfigError(f"{where}={path}: not a loadable state dict ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}={path}: holds a {type(state).__name__}, not a state dict of "
                          "tensors (save model.state_dict())")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        first = (f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model has not")
        raise ConfigError(f"{where}={path}: does not fit the configured model: it {first} "
                          f"({len(missing)} missing, {len(extra)} unexpected keys)")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise ConfigError(f"{where}={path}: does not fit the configured model: {key} is "
                              f"{tuple(state[key].shape)} there and {tuple(value.shape)} here")
    return state


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the cache key of a model given as a file."""
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def given_key(path: str) -> str:
    """The key of a model given as a file (`original.checkpoint`, `unlearned.checkpoint`): its
    bytes' sha256."""
    return "given-" + file_digest(path)
