"""A tiny unlearning problem shared by the method tests: 96 random 6x6 images of 3 classes,
the first 24 forgotten, and a linear model over them."""

import torch

from data.loader import Augment
from methods.common import UnlearnData

HP = dict(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16, decay_every=1,
          decay_gamma=0.5)


def tiny_data(use_retain: bool = True, augment: Augment = Augment(crop_pad=1, flip=False),
              **fields) -> UnlearnData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 6, 6), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return UnlearnData(forget_x=x[:24], forget_y=y[:24],
                       retain_x=x[24:] if use_retain else None,
                       retain_y=y[24:] if use_retain else None, num_classes=3,
                       augment=augment, seed=1, **fields)


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
