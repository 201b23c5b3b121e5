"""Ensembles of one architecture, and LOTOS (Boroojeny et al., "LOTOS: Layer-wise Orthogonalization
for Training Robust Ensembles", ICLR 2025, arXiv:2410.05136).

LOTOS trains the members jointly on the sum of their cross-entropies plus

    lambda * sum over ordered pairs (m, m'), m != m', and layers l of
             ReLU(||A_m^l v|| / ||v|| - mal),   v: the top right singular vector of m''s layer l,

so that no member's layer stretches the direction another member's layer stretches most. That
lowers the transferability of adversarial examples between members, which clipping (smoothness)
raises. The v are the PowerQR vectors FastClip keeps for each clipped layer (models.fastclip), so
LOTOS runs on clipped members; the paper's k = 1 (one vector per layer), mal = 0.8,
lambda = 0.05. Our choices: every conv and linear layer takes part, and each unordered pair is
penalized both ways.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.fastclip import Clipper
from models.spectral import linear_part


class Ensemble(nn.Module):
    """Members of one architecture. `forward` returns every member's logits, (members, B, C): the
    training view; `Mean(ensemble)` is the ensemble as one classifier."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members])


class Mean(nn.Module):
    """The ensemble's prediction: the mean of its members' logits (our choice; the mean of their
    probabilities would rank the same only when the members agree)."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble(x).mean(0)


def stretches(layer: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """||A v_i|| / ||v_i|| for the rows v_i of v, A the layer's linear part; differentiable in the
    layer's weights, not in v."""
    v = v.detach()
    return linear_part(layer, v).flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)


def lotos_term(layer: nn.Module, v: torch.Tensor, mal: float) -> torch.Tensor:
    """sum over the rows v_i of v of ReLU(||A v_i|| / ||v_i|| - mal) (see `stretches`)."""
    return F.relu(stretches(layer, v) - mal).sum()


def lotos_penalty(members: Sequence[nn.Module], mal: float) -> torch.Tensor:
    """LOTOS's penalty over the members' clipped layers (see the module doc). A layer whose
    PowerQR state has not started yet (before the first optimizer step) contributes nothing."""
    clippers = [getattr(m, "fastclip", None) for m in members]
    if not all(isinstance(c, Clipper) for c in clippers):
        raise ValueError("LOTOS needs clipped members (model.clip): it reads the singular "
                         "vectors FastClip keeps")
    total = torch.zeros((), device=next(members[0].parameters()).device)
    for i, mine in enumerate(clippers):
        for j, other in enumerate(clippers):
            if i == j:
                continue
            for name, state in mine.states.items():
                v = other.states[name].x
                if v is not None:
                    total = total + lotos_term(state.layer, v, mal)
    return total


def ensemble_loss(ensemble: Ensemble, *, label_smoothing: float, lotos_weight: float,
                  mal: float):
    """The joint training loss: the sum of the members' cross-entropies (each a batch mean), plus
    lotos_weight x `lotos_penalty` when lotos_weight > 0."""
    k = len(ensemble.members)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # logits: (k, B, C)
        ce = k * F.cross_entropy(logits.flatten(0, 1), y.repeat(k), label_smoothing=label_smoothing)
        if lotos_weight:
            ce = ce + lotos_weight * lotos_penalty(ensemble.members, mal)
        return ce

    return loss
