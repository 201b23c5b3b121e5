"""The model of a run: its `model` config node instantiated for its dataset. Part of the training
code's fingerprint (runner.trained.TRAINING_CODE), like every file in models/."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

# The model config's clipping keys (models.fastclip.ClipSpec's fields); not constructor arguments.
CLIP_KEYS = {"clip": "target", "clip_every": "every", "clip_steps": "steps",
             "clip_push_up": "push_up"}


def build_model(model_cfg: DictConfig, dataset_cfg: DictConfig) -> torch.nn.Module:
    """Instantiate the model for this dataset: channels, classes, size and normalization come from
    the dataset config; `normalize: false` feeds raw [0, 1] pixels (mean 0, std 1). With `clip` set,
    every conv and linear layer is clipped to it during training (models.fastclip.attach)."""
    from hydra.utils import instantiate

    from models.fastclip import ClipSpec, attach

    kwargs = {k: v for k, v in model_cfg.items() if k != "normalize" and k not in CLIP_KEYS}
    c = dataset_cfg.channels
    mean, std = ((list(dataset_cfg.mean), list(dataset_cfg.std)) if model_cfg.normalize
                 else ([0.0] * c, [1.0] * c))
    model = instantiate(kwargs, num_classes=dataset_cfg.num_classes, in_channels=c,
                        image_size=dataset_cfg.image_size, mean=mean, std=std)
    if model_cfg.get("clip") is not None:
        spec = ClipSpec(**{field: model_cfg[key] for key, field in CLIP_KEYS.items()
                           if key in model_cfg})
        attach(model, spec, torch.zeros(1, c, dataset_cfg.image_size, dataset_cfg.image_size))
    return model


def check_model(model_cfg: DictConfig, dataset_cfg: DictConfig) -> None:
    """Build the model once on the CPU (well under a second): a misspelled option, or data the
    architecture cannot take (airbench on 8x8 digits), fails here and not after data loading."""
    from hydra.errors import InstantiationException

    try:
        with torch.random.fork_rng(devices=[]):  # the run's random streams stay untouched
            build_model(model_cfg, dataset_cfg)
    except (InstantiationException, TypeError, ValueError) as err:
        raise ValueError(f"model {model_cfg.get('_target_')} for dataset {dataset_cfg.name}: "
                         f"{err}") from None
