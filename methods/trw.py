"""TRW, Tilted ReWeighting ("On the Necessity of Output Distribution Reweighting for Effective Class
Unlearning", arXiv 2506.20893), for forgetting one whole class f.

A model retrained without class f sends f's samples mostly to the classes nearest to f; TRW
fine-tunes the original towards that distribution instead of towards uniform or random labels.
For a forget-class sample with original probabilities p:
  p~_j = p_j / (1 - p_f) for j != f, p~_f = 0               (the remaining classes, renormalized)
  s_j  = softmax over j != f of cos(w_f, w_j) / temperature    (class similarity; s_f = 0)
  q_j  = p~_j exp(beta s_j) / sum_k p~_k exp(beta s_k)         (the tilted target)
where w_c are the rows of the final linear layer `fc`, centred and projected on their top
`pca_dim` principal components. The model is fine-tuned with cross-entropy towards q on the forget
class (the same gradients as KL(q || model), whose entropy term is constant) plus cross-entropy on
D_R each epoch (the forget pass, then one pass over D_R: `methods.common.with_retain_pass`
"after", so each epoch ends on the repair; our choice).

The paper's code is unpublished; choices (config values, defaults in conf/method/trw.yaml):
- `pca_dim`: components kept before the cosine (null: num_classes - 1; the centred rows span at
  most that many directions, so null only removes the shared mean);
- `temperature` of the similarity softmax (default 0.1, "low temperature");
- q is computed once, before the first update, from the original model on the un-augmented forget
  images (the original is the frozen reference, as in BS); the fine-tuning then augments as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.loader import to_float
from methods.common import UnlearnData, with_retain_pass
from runner.train import finetune
from runner.typed import BatchSize, Count, DecayGamma, Epochs, LR, Momentum, NonNegative, Positive


def class_cosines(weight: torch.Tensor, *, pca_dim: int) -> torch.Tensor:
    """(C, C) cosine similarities of the rows of `weight` (C, d), centred and projected on their
    top `pca_dim` principal directions."""
    w = weight.detach().double()
    w = w - w.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(w, full_matrices=False)
    z = F.normalize(w @ vh[:pca_dim].T, dim=1)
    return z @ z.T


def class_similarity(weight: torch.Tensor, forget_class: int, *, pca_dim: int,
                     temperature: float) -> torch.Tensor:
    """s (C,): the softmax over j != f of cos(w_f, w_j) / temperature (`class_cosines`); s_f = 0."""
    cos = class_cosines(weight, pca_dim=pca_dim)[forget_class].clone()
    cos[forget_class] = float("-inf")  # the softmax ignores the forget class
    return torch.softmax(cos / temperature, dim=0).float()


def tilted_target(probs: torch.Tensor, forget_class: int, similarity: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """q (n, C) from the original's probabilities (n, C): the remaining classes renormalized, then
    tilted by exp(beta * similarity); q[:, forget_class] = 0."""
    keep = torch.ones(probs.shape[1], dtype=torch.bool, device=probs.device)
    keep[forget_class] = False
    p = probs.double() * keep
    p = p / p.sum(dim=1, keepdim=True)
    q = p * torch.exp(beta * similarity.double().to(probs.device))
    return (q / q.sum(dim=1, keepdim=True)).float()


def unlearn(model: torch.nn.Module, data: UnlearnData, *, beta: NonNegative, pca_dim: Count | None,
            temperature: Positive, epochs: Epochs, lr: LR, momentum: Momentum,
            weight_decay: NonNegative, batch_size: BatchSize, decay_every: Epochs,
            decay_gamma: DecayGamma) -> torch.nn.Module:
    classes = torch.unique(data.forget_y)
    if len(classes) != 1:
        raise ValueError("trw forgets one whole class (forget=class); this forget set has labels "
                         f"{classes.tolist()}")
    f = int(classes[0])
    similarity = class_similarity(model.fc.weight, f, temperature=temperature,
                                  pca_dim=pca_dim or data.num_classes - 1)
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(to_float(data.forget_x[i:i + batch_size])).float(), 1)
                           for i in range(0, len(data.forget_x), batch_size)])
    target = tilted_target(probs, f, similarity, beta)
    forget = data.stream(data.forget_x, target, batch_size)  # soft labels: cross_entropy takes them
    stream = with_retain_pass(data, forget, batch_size, "after")
    return finetune(model, stream, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, decay_every=decay_every, decay_gamma=decay_gamma,
                    precision=data.precision, desc="trw")


unlearn.needs_class_forget = True
