"""The airbench network: a CIFAR-10 classifier built to train to ~94 % in seconds on one GPU.

After Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv:2404.00498), the
airbench94 network, in this package's conventions (input in [0, 1], `Normalize` first, the last
linear layer is `fc`, `features(x)` is its input):

    normalize -> whiten (2x2 conv, 2 * C * 4 channels, frozen weights, trained bias) -> GELU
    -> 3 x [conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU]   (widths w1, w2, w3)
    -> global max-pool -> fc (no bias) -> x `scale`

What is kept from airbench94: the widths (64, 256, 256), the frozen patch-whitening first layer
initialized from the training images' 2x2 patch covariance (:meth:`AirbenchNet.init_from_data`),
identity (Dirac) initialization of the first channels of every 3x3 conv, BatchNorm with frozen unit
weights and a trainable bias, running-stat momentum 0.4 (airbench's "momentum 0.6"),
the 1/9 output scale, and test-time augmentation of the logits (`tta`: 0 none, 1 mirror, 2 mirror +
one-pixel translations; airbench94 evaluates with 2). The TTA applies in eval mode only, so every
evaluator, attack and PGD step sees the same averaged logits; training sees one view.

The whitening bias starts at zero and trains for the first `whiten_bias_epochs` epochs only
(airbench: 3); the model says so in `epoch_limits()`, which a training from scratch turns into a
`runner.hooks.FreezeAfter`. airbench's lookahead EMA of the weights is the recipe's
(`train.lookahead`). What is not kept: airbench's fp16 weights; precision is the recipe's
(`train.precision: bf16` autocast). BatchNorm's epsilon defaults to airbench's 1e-12 (`bn_eps`). Its optimizer settings (Nesterov SGD,
label smoothing 0.2, BN biases at 64x the learning rate, the warm-up/decay schedule) are the
`train=fast` recipe, not part of the model.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import check_model_args, make_normalize

WHITEN_KERNEL: int = 2


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit scale and a trainable shift (airbench)."""

    def __init__(self, channels: int, momentum: float, eps: float) -> None:
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:in_ch])  # the first in_ch filters start as the identity
    return conv


class _Group(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.conv1, self.norm1 = _conv(in_ch, out_ch), _BatchNorm(out_ch, momentum, eps)
        self.conv2, self.norm2 = _conv(out_ch, out_ch), _BatchNorm(out_ch, momentum, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """airbench94's network for (B, C, H, W) images in [0, 1], H and W >= 16.

    Args:
        num_classes, in_channels, image_size, mean, std: data description.
        widths: channels of the three conv groups.
        bn_momentum: running-statistics momentum of BatchNorm (PyTorch's convention).
        bn_eps: BatchNorm's epsilon.
        scale: multiplies the logits.
        tta: test-time augmentation of the logits in eval mode: 0 none, 1 the mean over the image
            and its mirror, 2 airbench94's level 2 (see `forward`).
        whiten_bias_epochs: the whitening bias trains for this many epochs, then stays fixed
            (None: throughout).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 widths: Sequence[int] = (64, 256, 256), bn_momentum: float = 0.4,
                 bn_eps: float = 1e-12, scale: float = 1 / 9, tta: int = 2,
                 whiten_bias_epochs: int | None = 3) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size)
        if image_size < 16:
            raise ValueError(f"AirbenchNet needs images of at least 16x16, got {image_size}")
        widths = [int(w) for w in widths]
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive ints, got {widths}")
        if tta not in (0, 1, 2):
            raise ValueError(f"tta must be 0, 1 or 2, got {tta!r}")
        if whiten_bias_epochs is not None and (isinstance(whiten_bias_epochs, bool)
                                               or not isinstance(whiten_bias_epochs, int)
                                               or whiten_bias_epochs < 0):
            raise ValueError(f"whiten_bias_epochs must be null or an int >= 0, "
                             f"got {whiten_bias_epochs!r}")
        self.whiten_bias_epochs = whiten_bias_epochs
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.scale, self.tta = float(scale), tta
        self.normalize = make_normalize(in_channels, mean, std)
        whiten_width = 2 * in_channels * WHITEN_KERNEL ** 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, WHITEN_KERNEL, bias=True)
        self.whiten.weight.requires_grad_(False)
        with torch.no_grad():
            self.whiten.bias.zero_()
        ins = [whiten_width, *widths[:2]]
        self.groups = nn.Sequential(*(_Group(i, o, bn_momentum, bn_eps)
                                      for i, o in zip(ins, widths)))
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def epoch_limits(self) -> dict[str, int]:
        """Parameters that train for a number of epochs only, then stay as they are."""
        return {} if self.whiten_bias_epochs is None else {"whiten.bias": self.whiten_bias_epochs}

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the 2x2 patches of `images` (float in [0, 1], on the
        model's device; airbench uses 5,000 training images): the covariance's eigenvectors scaled
        by 1/sqrt(eigenvalue + eps), and their negatives."""
        x = self.normalize(images.float())
        c, k = x.shape[1], WHITEN_KERNEL
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        patches = patches.double()
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None])
        filters = filters.flip(0).reshape(c * k * k, c, k, k).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (B, widths[2]) of one view: the input of ``fc``. With
        `tta` > 0 an eval-mode forward averages several views, so it is not fc(features(x))."""
        out = self.groups(F.gelu(self.whiten(self.normalize(x))))
        # Global max-pool as a pooling op: torch.amax's backward under torch.compile with bf16
        # autocast gave NaN gradients on CPU (torch 2.14 inductor).
        return torch.flatten(F.adaptive_max_pool2d(out, 1), 1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.scale

    def _mirror(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(torch.cat([x, x.flip(3)])).view(2, len(x), -1).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == 0:
            return self._logits(x)
        if self.tta == 1:
            return self._mirror(x)
        # airbench94's level 2: half the mirror pair, half the mirror pairs of the image shifted one
        # pixel up-left and down-right (reflect padding); one forward pass over all six views.
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = torch.cat([x, padded[:, :, :h, :w], padded[:, :, 2:, 2:]])
        m = self._mirror(views).view(3, len(x), -1)
        return 0.5 * m[0] + 0.25 * (m[1] + m[2])
