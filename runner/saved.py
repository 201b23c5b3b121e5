"""The unlearned model a run leaves in its run dir, for a researcher's own analysis.

`unlearned.pt` is its state dict (load it with `torch.load(..., weights_only=True)`) and
`unlearned.yaml` the resolved `model` and `dataset` config nodes that rebuild its architecture
(`models.build.build_model`). `load(run_dir)` does both. The original and the oracle are not
copied: metrics.json's `models` names their files in the cache.
"""

from __future__ import annotations

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
