"""AMUN, Adversarial Machine UNlearning (Ebrahimpour-Boroojeny et al., "Not All Wrong is Bad: Using
Adversarial Examples for Unlearning", ICML 2025, arXiv 2503.00917).

Fine-tune the original model with cross-entropy on the shuffled union of
  D_A (the adversarial example of every forget sample, labelled with the original model's wrong
       prediction on it; built once per original model by `attacks.pgd` and cached by the runner),
  D_F (the forget samples with their true labels; left out with `adv_only`), and
  D_R (the retain set, when the run gives it: `use_retain`).
So with D_R: D_R + D_F + D_A (or D_R + D_A with adv_only); without: D_F + D_A (or D_A alone).
Train augmentation (crop, flip) applies to D_R and D_F, never to D_A: a shifted adversarial
example is no longer the point the attack found. `salun_ratio` (AMUN+SalUn) multiplies the
gradients by SalUn's saliency mask of that ratio (methods.salun, accumulated as
`salun_accumulation` says: batch_mean in the AMUN code); null turns it off.
"""

from __future__ import annotations

import torch

from data.loader import to_float
from methods.common import UnlearnData
from methods.salun import Accumulation, data_mask, mask_hook
from runner.adversarial import AdversarialSets
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative, Ratio


def unlearn(model: torch.nn.Module, data: UnlearnData, *, adv_only: bool, salun_ratio: Ratio | None,
            salun_accumulation: Accumulation, epochs: Epochs, lr: LR, momentum: Momentum,
            weight_decay: NonNegative, batch_size: BatchSize, decay_every: Epochs,
            decay_gamma: DecayGamma) -> torch.nn.Module:
    if data.adversarial is None:
        raise ValueError("amun needs the adversarial set; the runner builds it for methods that "
                         "declare unlearn.prepares = (AdversarialSets,)")
    adv_x, adv_y = data.adversarial
    if len(adv_y) == 0:
        raise ValueError("amun: the attack fooled the original model on no forget sample, so D_A "
                         "is empty; raise method.attack.max_doublings or eps_init")
    parts = [] if adv_only else [(data.forget_x, data.forget_y)]
    if data.retain_x is not None:
        parts.insert(0, (data.retain_x, data.retain_y))
    x = torch.cat([to_float(p[0]) for p in parts] + [adv_x.float()])
    y = torch.cat([p[1] for p in parts] + [adv_y])
    augment_mask = torch.arange(len(y), device=y.device) < len(y) - len(adv_y)
    hook = None
    if salun_ratio is not None:
        hook = mask_hook(data_mask(model, data, ratio=salun_ratio, batch_size=batch_size,
                                   accumulation=salun_accumulation))
    return finetune(model, data.stream(x, y, batch_size, augment_mask=augment_mask),
                    epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    decay_every=decay_every, decay_gamma=decay_gamma, grad_hook=hook,
                    precision=data.precision, desc="amun")


# D_A: built (and cached) by the runner for each request, from the model the request starts from.
unlearn.prepares = (AdversarialSets,)
