"""SalUn, saliency unlearning (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation", ICLR 2024).

1. Saliency mask: the gradient of the cross-entropy over D_F, taken at the original model in eval
   mode; keep the top `ratio` fraction of ALL parameter entries by |gradient| (one global
   threshold over every parameter tensor, as SalUn's generate_mask.py does). `mask_accumulation`
   says how the gradient is summed:
   - `batch_mean` (the AMUN code's generate_mask.py, the default; SalUn's is the same loop): the
     sum over the forget batches, in order, of the gradient of each batch's MEAN loss, the batches
     augmented with the training augmentation (the AMUN code's forget loader applies the train
     transform; its batch is the method's, 128). A
     small last batch weighs more per sample, and the mask depends on batch_size and on the crops
     and flips drawn (seeded from the run's seed).
   - `exact`: the gradient of the summed per-sample loss over the un-augmented forget images,
     which depends on neither.
2. RL fine-tuning (methods.rl: D_R + D_F with a fresh random wrong label per forget sample every
   epoch; D_F alone without D_R), with every gradient multiplied by the mask before the optimizer
   step.

Weight decay: SalUn's released code multiplies p.grad by the mask and then calls SGD.step(), which
adds weight_decay * theta to the gradient after the mask. We do the same, so a masked-out entry is
not moved by the loss but still decays (with momentum) like a parameter with zero gradient. With
weight_decay = 0 the masked-out entries stay exactly at their original values.

`data_mask` and `mask_hook` are public: AMUN+SalUn reuses them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from data.loader import Augment, augment_batch, to_float
from methods.common import UnlearnData, random_label_stream
from runner.train import GradHook, finetune
from runner.typed import BatchSize, DecayGamma, Epochs, Fraction, LR, Momentum, NonNegative

Accumulation = Literal["batch_mean", "exact"]


def forget_gradient(model: torch.nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, *,
                    batch_size: int, accumulation: Accumulation, augment: Augment | None = None,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """d/dtheta of the forget loss, per named parameter, in fp32: with `exact`, of
    sum_{(x, y) in D_F} CE(model(x), y); with `batch_mean`, the sum over batches of `batch_size`
    (in order, augmented by `augment` drawn from `seed`) of d/dtheta of the batch's mean CE.

    The model is in eval mode while the gradient is taken (SalUn's generate_mask.py does the same),
    so batch-norm running statistics are left untouched and every batch sees the same normalization.
    Gradients come from torch.autograd.grad, so p.grad of the model is never written.
    """
    if accumulation not in ("batch_mean", "exact"):
        raise ValueError(f"mask accumulation must be batch_mean or exact, got {accumulation!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    gen = torch.Generator(device=forget_x.device)
    gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(forget_x), batch_size):
            x, y = to_float(forget_x[i:i + batch_size]), forget_y[i:i + batch_size]
            if accumulation == "batch_mean" and augment is not None:
                x = augment_batch(x, augment, gen)
            loss = F.cross_entropy(model(x).float(), y,
                                   reduction="mean" if accumulation == "batch_mean" else "sum")
            # allow_unused: a parameter outside the forward path has gradient 0 (it ranks last).
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (name, _), g in zip(named, grads):
                if g is not None:
                    total[name] += g.float()
    finally:
        model.train(was_training)
    return total


def saliency_mask(model: torch.nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, *,
                  ratio: float, batch_size: int, accumulation: Accumulation,
                  augment: Augment | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Bool masks (one per named parameter) keeping the top `ratio` fraction of all parameter
    entries by |gradient of the forget loss|. Exactly round(ratio * total) entries are kept, even
    when several share the threshold value: topk on the flattened scores picks among tied entries
    (which ones is unspecified) instead of keeping all of them. SalUn's argsort ranks also keep an
    exact count; it uses int() where we round."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"saliency ratio must lie in [0, 1], got {ratio}")
    grads = forget_gradient(model, forget_x, forget_y, batch_size=batch_size,
                            accumulation=accumulation, augment=augment, seed=seed)
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


def data_mask(model: torch.nn.Module, data: UnlearnData, *, ratio: float, batch_size: int,
              accumulation: Accumulation) -> dict[str, torch.Tensor]:
    """The saliency mask of `data`'s forget set, augmented as the run trains (`batch_mean`)."""
    return saliency_mask(model, data.forget_x, data.forget_y, ratio=ratio, batch_size=batch_size,
                         accumulation=accumulation, augment=data.augment,
                         seed=data.seed * 1000 + MASK_SALT)


MASK_SALT = 7  # the mask's augmentation draws apart from the fine-tuning streams' (salts 0, 1)


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: Epochs, lr: LR,
            momentum: Momentum, weight_decay: NonNegative, batch_size: BatchSize,
            decay_every: Epochs, decay_gamma: DecayGamma, ratio: Fraction,
            mask_accumulation: Accumulation) -> torch.nn.Module:
    """SalUn: RL fine-tuning with gradients restricted to the salient `ratio` of the weights. The
    mask is computed once, on the original model, before any update."""
    mask = data_mask(model, data, ratio=ratio, batch_size=batch_size,
                     accumulation=mask_accumulation)
    return finetune(model, random_label_stream(data, batch_size), epochs=epochs, lr=lr,
                    momentum=momentum, weight_decay=weight_decay, decay_every=decay_every,
                    decay_gamma=decay_gamma, grad_hook=mask_hook(mask), precision=data.precision,
                    desc="salun")
