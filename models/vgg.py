"""VGG-19 with batch normalization for small images.

Convolutional configuration "E" of Simonyan & Zisserman, "Very Deep
Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(arXiv:1409.1556), with BatchNorm after every conv (Ioffe & Szegedy 2015).

Head: instead of the ImageNet classifier (three fully connected layers on a
7x7 map) we average-pool the last feature map to 1x1 and apply a single
Linear(512, num_classes) as ``fc``. This is the VGG used for CIFAR-10/100 and
Tiny-ImageNet in the unlearning literature (e.g. the kuangliu/pytorch-cifar
model reused by AMUN, arXiv:2503.00917); on 32x32 inputs the last map is
already 1x1, so it is exactly that model. On 64x64 inputs the map is 2x2 and
we average it, whereas AMUN's Tiny-ImageNet variant flattens it into a
Linear(2048, ...); averaging keeps ``fc`` the same shape for every dataset.

Small inputs: five 2x2 max-pools would shrink 8x8 (digits) or 28x28 (MNIST)
below 1x1 and crash. Since ``image_size`` is known at construction, a pool
whose input would already be 1 pixel wide is built as ``nn.Identity``: the
remaining convolutions then run at 1x1. Identity (rather than dropping the
entry) keeps the module indices, hence the state_dict keys, the same for
every image size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.layers import check_model_args, make_normalize

# "M" is a 2x2 max-pool, ints are 3x3 conv widths (VGG configuration E).
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)


def make_vgg_layers(cfg: Sequence[int | str], in_channels: int,
                    image_size: int) -> tuple[nn.Sequential, int]:
    """Build the conv stack; returns it and the spatial size it outputs."""
    layers: list[nn.Module] = []
    size = image_size
    for item in cfg:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers.append(nn.Identity())  # see module docstring
            continue
        width = int(item)
        layers += [
            # bias kept although BN follows: matches torchvision's vgg19_bn and
            # the CIFAR VGG, so parameter counts agree with the literature
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers), size


class VGG19BN(nn.Module):
    """VGG-19-BN (Simonyan & Zisserman 2015) with a global-average-pool head.

    Layout: Normalize -> 16 x (conv3x3 -> BN -> ReLU) with 5 max-pools ->
    adaptive average pool to 1x1 -> ``fc`` = Linear(512, num_classes).

    Args:
        num_classes, in_channels, image_size, mean, std: data description.
            ``image_size`` decides which pools are kept (see module docstring),
            so feed images of that size or larger.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, image_size)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.normalize = make_normalize(in_channels, mean, std)
        self.conv_layers, self.final_size = make_vgg_layers(VGG19_CFG, in_channels, image_size)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (B, 512): the input of ``fc``."""
        out = self.conv_layers(self.normalize(x))
        return torch.flatten(self.avgpool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
