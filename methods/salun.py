"""SalUn, saliency unlearning (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation", ICLR 2024).

1. Saliency mask: the gradient of the cross-entropy summed over D_F, taken at the original model;
   keep the top `ratio` fraction of ALL parameter entries by |gradient| (one global threshold over
   every parameter tensor, as SalUn's generate_mask.py does).
2. RL fine-tuning (methods.rl: D_R + D_F with a fresh random wrong label per forget sample every
   epoch; D_F alone without D_R), with every gradient multiplied by the mask before the optimizer
   step.

Weight decay: SalUn's released code multiplies p.grad by the mask and then calls SGD.step(), which
adds weight_decay * theta to the gradient after the mask. We do the same, so a masked-out entry is
not moved by the loss but still decays (with momentum) like a parameter with zero gradient. With
weight_decay = 0 the masked-out entries stay exactly at their original values.

`saliency_mask` and `mask_hook` are public: AMUN+SalUn reuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.loader import to_float
from methods.common import UnlearnData, random_label_stream
from runner.train import GradHook, finetune


def forget_gradient(model: torch.nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, *,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """d/dtheta of sum_{(x, y) in D_F} CE(model(x), y), per named parameter, in fp32.

    The model is in eval mode while the gradient is taken (SalUn's generate_mask.py does the same),
    so batch-norm running statistics are left untouched and every batch sees the same normalization.
    Gradients come from torch.autograd.grad, so p.grad of the model is never written.
    SalUn sums per-batch *mean* losses; with equal batches that is the same up to a constant factor
    (which does not change the ranking); we sum per-sample losses so the trailing batch is not
    over-weighted and the result does not depend on batch_size.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(forget_x), batch_size):
            x, y = to_float(forget_x[i:i + batch_size]), forget_y[i:i + batch_size]
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            # allow_unused: a parameter outside the forward path has gradient 0 (it ranks last).
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (name, _), g in zip(named, grads):
                if g is not None:
                    total[name] += g.float()
    finally:
        model.train(was_training)
    return total


def saliency_mask(model: torch.nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, *,
                  ratio: float, batch_size: int) -> dict[str, torch.Tensor]:
    """Bool masks (one per named parameter) keeping the top `ratio` fraction of all parameter
    entries by |gradient of the forget loss|. Exactly round(ratio * total) entries are kept, even
    when several share the threshold value: topk on the flattened scores picks among tied entries
    (which ones is unspecified) instead of keeping all of them. SalUn's argsort ranks also keep an
    exact count; it uses int() where we round."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"saliency ratio must lie in [0, 1], got {ratio}")
    grads = forget_gradient(model, forget_x, forget_y, batch_size=batch_size)
    scores = torch.cat([g.abs().flatten() for g in grads.values()])
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[torch.topk(scores, round(ratio * scores.numel()), sorted=False).indices] = True
    masks, start = {}, 0
    for name, g in grads.items():
        masks[name] = keep[start:start + g.numel()].view_as(g)
        start += g.numel()
    return masks


def mask_hook(mask: dict[str, torch.Tensor]) -> GradHook:
    """A `fit` grad_hook multiplying each parameter's gradient by its mask; parameters absent from
    the mask (or without a gradient) are left alone. Runs before optimizer.step(), so weight decay
    still applies to masked-out entries, as in SalUn's code."""

    def hook(model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            m = mask.get(name)
            if m is not None and p.grad is not None:
                p.grad.mul_(m)

    return hook


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int, decay_gamma: float,
            ratio: float) -> torch.nn.Module:
    """SalUn: RL fine-tuning with gradients restricted to the salient `ratio` of the weights. The
    mask is computed once, on the original model, before any update."""
    mask = saliency_mask(model, data.forget_x, data.forget_y, ratio=ratio, batch_size=batch_size)
    return finetune(model, random_label_stream(data, batch_size), epochs=epochs, lr=lr,
                    momentum=momentum, weight_decay=weight_decay, decay_every=decay_every,
                    decay_gamma=decay_gamma, grad_hook=mask_hook(mask), precision=data.precision,
                    desc="salun")
