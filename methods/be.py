"""BE, Boundary Expanding (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023).

The final layer `fc` gets one extra output, a shadow class; the forget samples are fine-tuned with
that shadow class as their label, which spreads their features into a region no real class owns;
the shadow output is then removed, leaving the real classes' rows as they were trained.

Choices where the paper is silent or our protocol differs:
- the shadow row starts as PyTorch's default Linear initialization of a fresh row (bias included);
- with use_retain, each epoch adds one descent pass over D_R (`retain_pass`, methods.common: before
  the pass over D_F in the AMUN code, as for GA and BS); the original BE uses D_F only
  (use_retain: false).
"""

from __future__ import annotations

import torch
from torch import nn

from methods.common import RetainPass, UnlearnData, with_retain_pass
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative


def _resized(fc: nn.Linear, out_features: int) -> nn.Linear:
    """A new fc with `out_features` outputs whose first rows are fc's first rows (weight, and bias
    if fc has one: airbench's fc has none)."""
    out = nn.Linear(fc.in_features, out_features, bias=fc.bias is not None)
    out = out.to(fc.weight.device, fc.weight.dtype)
    with torch.no_grad():
        n = min(fc.out_features, out_features)
        out.weight[:n].copy_(fc.weight[:n])
        if fc.bias is not None:
            out.bias[:n].copy_(fc.bias[:n])
    return out


def _expand(fc: nn.Linear) -> nn.Linear:
    """fc with one more output row (the shadow class); the first rows are fc's."""
    return _resized(fc, fc.out_features + 1)


def _prune(fc: nn.Linear) -> nn.Linear:
    """fc without its last output row."""
    return _resized(fc, fc.out_features - 1)


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma,
            retain_pass: RetainPass) -> torch.nn.Module:
    model.fc = _expand(model.fc)
    shadow = torch.full_like(data.forget_y, data.num_classes)
    stream = with_retain_pass(data, data.stream(data.forget_x, shadow, batch_size), batch_size,
                              retain_pass)
    model = finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                     weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                     precision=data.precision, desc="be")
    model.fc = _prune(model.fc)
    return model.eval()
