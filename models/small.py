"""A small CNN for fast CPU experiments (8x8 digits, MNIST, CIFAR).

Three 3x3 conv -> BN -> ReLU layers (widths w, 2w, 4w) with one 2x2 max-pool
after the second, then global average pooling and a linear ``fc``: the usual
"small conv net" of smoke tests and toy unlearning experiments. At the
default width 32 it has about 95k parameters and trains on 8x8 digits in
seconds on a 2-core CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.layers import check_model_args, make_normalize

# Below this input size the max-pool is skipped: an 8x8 digit is small
# enough already, and pooling 4x4 maps would leave too little for conv3.
MIN_SIZE_FOR_POOL: int = 8


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BN has the bias
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv(w) -> conv(2w) -> [maxpool 2] -> conv(4w) -> avgpool -> ``fc``.

    Args:
        num_classes, in_channels, image_size, mean, std: data description.
            The max-pool is present iff ``image_size >= 8``; it is an Identity
            otherwise so state_dict keys do not depend on the image size.
        width: channels of the first conv; the others are 2x and 4x it.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], width: int = 32) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.width = width
        self.normalize = make_normalize(in_channels, mean, std)
        self.conv1 = conv_bn_relu(in_channels, width)
        self.conv2 = conv_bn_relu(width, 2 * width)
        self.pool: nn.Module = (nn.MaxPool2d(2) if image_size >= MIN_SIZE_FOR_POOL
                                else nn.Identity())
        self.conv3 = conv_bn_relu(2 * width, 4 * width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (B, 4 * width): the input of ``fc``."""
        out = self.pool(self.conv2(self.conv1(self.normalize(x))))
        return torch.flatten(self.avgpool(self.conv3(out)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
