"""Bad Teacher (Chundawat, Tarun, Mandal and Kankanhalli, "Can Bad Teaching Induce Forgetting?
Unlearning in Deep Networks using an Incompetent Teacher", AAAI 2023).

A student, started from the original, is distilled from two frozen teachers: the competent one
(the original) on retain samples and an incompetent one (the architecture at a fresh random
initialization, never trained) on forget samples. One pass over D_F plus a random `retain_fraction`
of D_R, shuffled together; per batch
  KL(t || softmax(student(x) / T)),  t = softmax(random(x) / T) on forget samples,
                                         softmax(original(x) / T) on retain samples,
averaged over every entry of the (batch, classes) array, as the official code's `F.kl_div` with
its default reduction, with no T^2 factor. Adam, the teachers in eval mode.

Defaults (conf/method/bad_teacher.yaml): the official code's `blindspot_unlearner` call: 1
epoch, Adam lr 1e-4, batch 256, T = 1, 30 % of D_R. The retain subset is drawn once from the run's
seed. The method needs D_R (the paper's competent-teacher samples): a run without it is refused.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from methods.common import UnlearnData, reinitialize
from runner.train import fit
from runner.typed import BatchSize, Epochs, Fraction, LR, NonNegative, Positive


def teacher_targets(competent: torch.Tensor, incompetent: torch.Tensor, is_forget: torch.Tensor,
                    T: float) -> torch.Tensor:
    """The distillation target of each sample: the incompetent teacher's softmax at temperature T
    on forget samples, the competent teacher's elsewhere."""
    return torch.where(is_forget[:, None], F.softmax(incompetent.float() / T, 1),
                       F.softmax(competent.float() / T, 1))


def unlearn(model: torch.nn.Module, data: UnlearnData, *, retain_fraction: Fraction,
            temperature: Positive, epochs: Epochs, lr: LR, weight_decay: NonNegative,
            batch_size: BatchSize) -> torch.nn.Module:
    competent = copy.deepcopy(model).eval().requires_grad_(False)
    incompetent = reinitialize(copy.deepcopy(model)).eval().requires_grad_(False)
    C = data.num_classes
    x, y = data.forget_x, data.forget_y + C  # a label >= C marks a forget sample
    retain_x, retain_y = data.retain("bad_teacher")
    if retain_fraction > 0:
        g = torch.Generator().manual_seed(data.seed)
        n = round(retain_fraction * len(retain_y))
        pick = torch.randperm(len(retain_y), generator=g)[:n].to(retain_y.device)
        x, y = torch.cat([retain_x[pick], x]), torch.cat([retain_y[pick], y])

    def loss(student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher_targets(competent(x), incompetent(x), y >= C, temperature)
        log_s = F.log_softmax(student(x).float() / temperature, 1)
        # F.kl_div's "mean": over every entry of the (batch, classes) array
        return F.kl_div(log_s, target, reduction="sum") / target.numel()

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                           weight_decay=weight_decay)
    return fit(model, data.stream(x, y, batch_size), epochs=epochs, optimizer=opt, loss=loss,
               precision=data.precision, desc="bad_teacher")


unlearn.needs_retain = True
