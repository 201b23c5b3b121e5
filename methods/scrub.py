"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023): a student, started
from the original, is pushed away from the frozen original (the teacher) on D_F and kept close to
it on D_R.

Each epoch: if it is one of the first `max_steps` epochs, a max pass over D_F ascends
  KD(x) = T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))
then a min pass over D_R descends gamma * CE(student(x), y) + alpha * KD(x). The teacher sees the
same augmented batch as the student (both run inside one module, which `fit` trains).

Choices where our protocol differs from SCRUB's code: the learning rate follows the shared step
decay (`decay_every`, `decay_gamma`) instead of SCRUB's list of decay epochs; KD is averaged over
the batch (SCRUB's DistillKL sums and divides by the batch size: the same).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from data.loader import Concat
from methods.common import UnlearnData
from runner.train import finetune
from runner.typed import BatchSize, DecayGamma, Epochs, LR, Momentum, NonNegative, Positive

FORGET = -1  # the label that marks a max-step (D_F) batch for the loss


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * T * T


class StudentTeacher(nn.Module):
    """Runs the student and the frozen teacher on one batch; outputs their logits side by side."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "StudentTeacher":
        self.student.train(mode)  # the teacher stays in eval mode (its BN statistics are fixed)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher(x)
        return torch.cat([self.student(x), t], dim=1)


class FirstEpochs:
    """A stream that yields its batches in the first `n` epochs only."""

    def __init__(self, stream, n: int):
        self.stream, self.n, self.epoch = stream, n, 0

    def __len__(self) -> int:
        return len(self.stream) if self.epoch < self.n else 0

    def __iter__(self):
        self.epoch += 1
        return iter(self.stream) if self.epoch <= self.n else iter(())


def unlearn(model: torch.nn.Module, data: UnlearnData, *, max_steps: int, alpha: NonNegative,
            gamma: Positive, temperature: Positive, epochs: Epochs, lr: LR, momentum: Momentum,
            weight_decay: NonNegative, batch_size: BatchSize, decay_every: Epochs,
            decay_gamma: DecayGamma) -> torch.nn.Module:
    retain_x, retain_y = data.retain("scrub")
    pair = StudentTeacher(model)
    classes = data.num_classes

    def loss(pair: StudentTeacher, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = pair(x)
        student, teacher = out[:, :classes], out[:, classes:]
        kd = distill_kl(student, teacher, temperature)
        # A batch is all forget (KD alone; the stream's sign -1 makes it an ascent) or all retain.
        # Chosen on the device, so the step needs no host sync; clamp_min keeps the CE of the
        # branch not taken finite on forget labels.
        retain_loss = gamma * F.cross_entropy(student, y.clamp_min(0)) + alpha * kd
        return torch.where(y[0] == FORGET, kd, retain_loss)

    forget = data.stream(data.forget_x, torch.full_like(data.forget_y, FORGET), batch_size,
                         sign=-1.0)
    stream = Concat(FirstEpochs(forget, max_steps),
                    data.stream(retain_x, retain_y, batch_size, salt=1))
    finetune(pair, stream, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
             decay_every=decay_every, decay_gamma=decay_gamma, loss=loss,
             precision=data.precision, desc="scrub")
    return pair.student.eval()


unlearn.needs_retain = True
