"""BE, Boundary Expanding (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023).

The final layer `fc` gets one extra output, a shadow class; the forget samples are fine-tuned with
that shadow class as their label, which spreads their features into a region no real class owns;
the shadow output is then removed, leaving the real classes' rows as they were trained.

Choices where the paper is silent or our protocol differs:
- the shadow row starts as PyTorch's default Linear initialization of a fresh row (bias included);
- with use_retain, each epoch is the pass over D_F followed by one descent pass on D_R, as GA and
  BS do here; the original BE uses D_F only (use_retain: false).
"""

from __future__ import annotations

import torch
from torch import nn

from data.loader import Concat
from methods.common import UnlearnData
from runner.train import finetune


def _expand(fc: nn.Linear) -> nn.Linear:
    """fc with one more output row (the shadow class); the first rows are fc's."""
    out = nn.Linear(fc.in_features, fc.out_features + 1).to(fc.weight.device, fc.weight.dtype)
    with torch.no_grad():
        out.weight[:-1].copy_(fc.weight)
        out.bias[:-1].copy_(fc.bias)
    return out


def _prune(fc: nn.Linear) -> nn.Linear:
    """fc without its last output row."""
    out = nn.Linear(fc.in_features, fc.out_features - 1).to(fc.weight.device, fc.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(fc.weight[:-1])
        out.bias.copy_(fc.bias[:-1])
    return out


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int,
            decay_gamma: float) -> torch.nn.Module:
    model.fc = _expand(model.fc)
    shadow = torch.full_like(data.forget_y, data.num_classes)
    stream = data.stream(data.forget_x, shadow, batch_size)
    if data.retain_x is not None:
        stream = Concat(stream, data.stream(data.retain_x, data.retain_y, batch_size, salt=1))
    model = finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                     weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                     precision=data.precision, desc="be")
    model.fc = _prune(model.fc)
    return model.eval()
