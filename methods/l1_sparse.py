"""l1-sparse (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023): fine-tune
the original on D_R with the loss CE + alpha_t * ||theta||_1, which pushes the model towards a
sparse one that forgets more easily.

alpha_t decays linearly from `alpha` to 0 over the run (the paper's linear decay schedule):
alpha_t = alpha * (1 - t / T) at optimizer step t of T. The public code decays once per epoch
(alpha * (1 - epoch / epochs)); we decay per step, the smooth version of the same line.
The penalty enters as a grad_hook adding alpha_t * sign(theta) (the subgradient of the l1 term,
0 at theta = 0, as autograd's abs gives) to every parameter's gradient, batch-norm affine
parameters included (the public code penalizes all of model.parameters() too). Added to the
gradient before optimizer.step(), it flows through momentum exactly as the loss term would.
"""

from __future__ import annotations

import torch

from methods.common import UnlearnData
from runner.train import GradHook, finetune


def alpha_at(step: int, *, alpha: float, total_steps: int) -> float:
    """Linear decay: alpha at step 0, 0 at step total_steps (and after)."""
    return alpha * max(0.0, 1.0 - step / total_steps)


def l1_hook(*, alpha: float, total_steps: int) -> GradHook:
    """A grad_hook adding alpha_t * sign(theta) to each gradient; counts its own calls (one per
    optimizer step) to know t."""
    step = 0

    def hook(model: torch.nn.Module) -> None:
        nonlocal step
        a = alpha_at(step, alpha=alpha, total_steps=total_steps)
        step += 1
        if a == 0.0:
            return
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=a)

    return hook


def unlearn(model: torch.nn.Module, data: UnlearnData, *, epochs: int, lr: float, momentum: float,
            weight_decay: float, batch_size: int, decay_every: int, decay_gamma: float,
            alpha: float) -> torch.nn.Module:
    x, y = data.retain("l1_sparse")
    stream = data.stream(x, y, batch_size)
    hook = l1_hook(alpha=alpha, total_steps=max(epochs * len(stream), 1))
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    grad_hook=hook, precision=data.precision, desc="l1_sparse")


unlearn.needs_retain = True
