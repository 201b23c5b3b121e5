"""ResNet-18 for small images (CIFAR style).

Architecture from He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385), in the CIFAR adaptation that most unlearning
codebases use: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs reach the
last stage at 4x4. The global pool is adaptive, so 8x8, 28x28 and 64x64 inputs
work with the same weights shapes.

``halve_downsample=True`` reproduces the variant trained in AMUN
(Ebrahimpour-Boroojeny et al., "AMUN: Adversarial Machine UNlearning",
arXiv:2503.00917, models/resnet_orig.py of their code): every block whose
shortcut is a projection divides its output by 2 after the residual add, which
bounds the block's Lipschitz constant by the larger of its two branches'
instead of their sum. AMUN divides before the final ReLU; we divide after it.
Both are identical because ReLU is positively homogeneous:
relu(z / 2) == relu(z) / 2.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.layers import check_model_args, make_normalize, norm2d

STAGE_MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8)  # of `width`: 64, 128, 256, 512 channels
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
BLOCKS_PER_STAGE: int = 2


def conv3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (He et al. 2016, Fig. 2 left).

    The shortcut is a 1x1 conv + BN projection when the block changes the
    resolution or the width (option B of the paper), the identity otherwise.
    ``halve`` only takes effect on projection blocks (see module docstring);
    it is a plain float attribute, not a buffer or parameter, so the halved
    and plain models have exactly the same state_dict.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, *,
                 batch_norm: bool = True, halve: bool = False) -> None:
        super().__init__()
        bias = not batch_norm  # a conv bias right before BN is redundant
        self.conv1 = conv3x3(in_ch, out_ch, stride, bias)
        self.bn1 = norm2d(out_ch, batch_norm)
        self.conv2 = conv3x3(out_ch, out_ch, 1, bias)
        self.bn2 = norm2d(out_ch, batch_norm)
        self.downsample = stride != 1 or in_ch != out_ch
        self.shortcut: nn.Module = nn.Identity()
        if self.downsample:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias),
                norm2d(out_ch, batch_norm),
            )
        self.out_scale: float = 0.5 if (halve and self.downsample) else 1.0
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.shortcut(x))
        if self.out_scale != 1.0:
            out = out * self.out_scale
        return out

    def extra_repr(self) -> str:
        return f"downsample={self.downsample}, out_scale={self.out_scale}"


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (He et al. 2016) with input normalization.

    Layout: Normalize -> conv3x3(64, stride 1) -> BN -> ReLU -> 4 stages of 2
    BasicBlocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2) -> adaptive
    average pool -> ``fc``. 11,173,962 parameters for 10 classes with BN.

    Args:
        num_classes, in_channels, image_size, mean, std: data description
            (see ``models`` package docs); image_size is only validated, the
            network is resolution agnostic.
        halve_downsample: AMUN variant, the projection blocks divide their
            output by 2 (arXiv:2503.00917).
        batch_norm: if False every BatchNorm is replaced by Identity and the
            convolutions get biases instead.
        width: channels of the stem and the first stage (64 in ResNet-18); the
            stages have width x (1, 2, 4, 8). Smaller widths make a small ResNet
            for CPU runs.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 halve_downsample: bool = False, batch_norm: bool = True,
                 width: int = 64) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.halve_downsample = halve_downsample
        self.batch_norm = batch_norm

        self.normalize = make_normalize(in_channels, mean, std)
        w = [width * m for m in STAGE_MULTIPLIERS]
        s = STAGE_STRIDES
        self.conv1 = conv3x3(in_channels, w[0], 1, bias=not batch_norm)
        self.bn1 = norm2d(w[0], batch_norm)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(w[0], w[0], s[0])
        self.layer2 = self._make_stage(w[0], w[1], s[1])
        self.layer3 = self._make_stage(w[1], w[2], s[2])
        self.layer4 = self._make_stage(w[2], w[3], s[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def _make_stage(self, in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
        blocks = []
        for i in range(BLOCKS_PER_STAGE):
            blocks.append(BasicBlock(in_ch if i == 0 else out_ch, out_ch,
                                     stride if i == 0 else 1,
                                     batch_norm=self.batch_norm,
                                     halve=self.halve_downsample))
        return nn.Sequential(*blocks)

    def blocks(self) -> list[BasicBlock]:
        """All residual blocks in forward order."""
        return [m for m in self.modules() if isinstance(m, BasicBlock)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (B, 8 x width): the input of ``fc``."""
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
