"""UNSIR (Tarun, Chundawat, Mandal and Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE
TNNLS 2023): class unlearning by error-maximizing noise, in three steps.

1. Noise: for each forgotten class c, a batch of `noise_batch` noise images N (a trainable
   tensor, initialized N(0, 1)) ascends the original's cross-entropy on label c, with an L2
   penalty: Adam at `noise_lr` descends
       -CE(model(N), c) + noise_reg * mean over images of sum(N^2)
   for `noise_epochs` x `noise_steps` steps, the model frozen.
2. Impair: one pass (`impair_epochs`) of Adam at `impair_lr` on the noise images, labelled c, shuffled
   with a subset of D_R (`retain_per_class` samples of every retained class).
3. Repair: `repair_epochs` of Adam at `repair_lr` on the same retain subset.

Defaults (conf/method/unsir.yaml) come from the official notebook (Fast-Machine-Unlearning); see
the YAML for each. Choices, where the notebook is silent or where we part from it:
- the noise lives in the space the model normalizes its inputs into (N(0, 1) there, as in the
  notebook, whose models take normalized images): a model with a `normalize` layer gets
  N * std + mean as its [0, 1]-scale input, any other model N itself;
- the noise is learnt with the model in eval mode (the notebook leaves its freshly loaded model in
  train mode, so batch norm normalizes by the noise batch and its running statistics drift over
  the 40 steps);
- the impair set holds every one of the `noise_batch` noise images once, labelled with its class:
  the paper's description. The notebook's loop (`for i in range(batch[0].size(0))`, the channel
  count) keeps images 0-2 of each class's noise, 20 copies each, all labelled 0;
- the retain subset is the first `retain_per_class` of a shuffle seeded by the run (the notebook:
  the first per class in dataset order);
- no augmentation in impair and repair (the notebook's retain samples carry none).
Class forgetting only: `forget=random` is refused before any compute, as is `requests > 1` (a
later request's class would sit in the retain subset of the earlier ones); the method needs D_R.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.loader import Batches
from methods.common import UnlearnData
from runner.train import fit
from runner.typed import BatchSize, ConfigError, Count, Epochs, LR, NonNegative, Steps


def to_input(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Noise z in the model's normalized space as the model's input: z * std + mean where the
    model normalizes (a `normalize` layer with mean and std), z itself otherwise."""
    norm = getattr(model, "normalize", None)
    if norm is not None and hasattr(norm, "mean") and hasattr(norm, "std"):
        return z * norm.std + norm.mean
    return z


def error_maximizing_noise(model: torch.nn.Module, label: int, shape: tuple[int, ...], *,
                           epochs: int, steps: int, lr: float, reg: float) -> torch.Tensor:
    """Step 1 for one class: the noise batch (model input scale) after its Adam ascent of the
    frozen model's cross-entropy on `label`, with the L2 penalty `reg`."""
    device = next(model.parameters()).device
    z = torch.randn(shape, device=device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    labels = torch.full((shape[0],), label, device=device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(epochs * steps):
            loss = (-F.cross_entropy(model(to_input(model, z)).float(), labels)
                    + reg * z.square().sum(dim=tuple(range(1, z.dim()))).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return to_input(model, z.detach())


def retain_subset(data: UnlearnData, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` samples of each class of D_R (the first of a seeded shuffle)."""
    x, y = data.retain("unsir")
    g = torch.Generator().manual_seed(data.seed)
    order = torch.randperm(len(y), generator=g).to(y.device)
    keep = torch.cat([order[y[order] == c][:per_class] for c in torch.unique(y)])
    return x[keep], y[keep]


def unlearn(model: torch.nn.Module, data: UnlearnData, *, noise_batch: BatchSize,
            noise_epochs: Epochs, noise_steps: Steps, noise_lr: LR, noise_reg: NonNegative,
            retain_per_class: Count, impair_epochs: Epochs, impair_lr: LR, repair_epochs: Epochs,
            repair_lr: LR, batch_size: BatchSize) -> torch.nn.Module:
    classes = [int(c) for c in torch.unique(data.forget_y)]
    shape = (noise_batch, *data.forget_x.shape[1:])
    model.eval()
    noise = [error_maximizing_noise(model, c, shape, epochs=noise_epochs, steps=noise_steps,
                                    lr=noise_lr, reg=noise_reg) for c in classes]
    noise_y = torch.cat([torch.full((noise_batch,), c, device=data.forget_y.device)
                         for c in classes])
    keep_x, keep_y = retain_subset(data, retain_per_class)
    keep_x = keep_x.float() / 255  # the noise is float: one float set, model-input scale

    def stream(x, y, salt):
        return Batches(x, y, batch_size=batch_size, shuffle=True, seed=data.seed * 1000 + salt,
                       channels_last=data.channels_last)

    impair = stream(torch.cat([torch.cat(noise), keep_x]), torch.cat([noise_y, keep_y]), 0)
    fit(model, impair, epochs=impair_epochs, optimizer=torch.optim.Adam(model.parameters(),
                                                                        lr=impair_lr),
        precision=data.precision, desc="unsir impair")
    fit(model, stream(keep_x, keep_y, 1), epochs=repair_epochs,
        optimizer=torch.optim.Adam(model.parameters(), lr=repair_lr),
        precision=data.precision, desc="unsir repair")
    return model


def check(cfg) -> None:
    """One class unlearned at once (see the module docstring)."""
    if cfg.requests != 1:
        raise ConfigError(f"method unsir unlearns one request (requests={cfg.requests}): its "
                          "retain subset would hold the classes of later requests")


unlearn.needs_retain = True
unlearn.needs_class_forget = True
unlearn.check = check
