"""The optimizer of every training: SGD over the trainable parameters (what else a training does
per step, such as airbench's EMA or FastClip, is a hook of `fit`: runner.hooks)."""

from __future__ import annotations

import torch


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
        nesterov: bool = False, bias_lr_scale: float = 1.0) -> torch.optim.SGD:
    """SGD over the trainable parameters. `bias_lr_scale` != 1 puts the BatchNorm shifts in a group
    of their own at lr x scale and weight decay / scale, so their decay per step (lr x wd) is the
    others' (airbench's "bias scaler")."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if bias_lr_scale != 1.0:
        norm_bias = {id(m.bias) for m in model.modules()
                     if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.bias is not None}
        groups = [{"params": [p for p in params if id(p) not in norm_bias]},
                  {"params": [p for p in params if id(p) in norm_bias],
                   "lr": lr * bias_lr_scale, "weight_decay": weight_decay / bias_lr_scale}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)
