"""Datasets that need no files: scikit-learn's bundled digits and generated synthetic images."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .readers import Arrays

def read_digits() -> Arrays:
    """scikit-learn's bundled 8x8 digits (values 0..16, scaled to 0..255) with a fixed
    stratified 80/20 split: 1437 train, 360 test images of shape (1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return Arrays(x[train], y[train], x[test], y[test], tuple(str(i) for i in range(10)))


# Signal and noise levels of the synthetic images, in pixel units. Tuned so that a small CNN
# reaches roughly 60-90% test accuracy on the defaults (4 classes, 512 images) in 5-15 epochs:
# well above chance but never trivially 100%, and with a train/test gap when it overfits.
SYNTHETIC_AMPLITUDE = 10.0
SYNTHETIC_NOISE = 60.0
SYNTHETIC_BRIGHTNESS_JITTER = 20.0


def make_synthetic(num_train: int, num_test: int, num_classes: int, channels: int,
                   image_size: int, seed: int) -> Arrays:
    """Class-conditional noise images, deterministic in ``seed``.

    Each class has a fixed template: a smooth random pattern (a 4x4 grid upsampled, so that
    convolutions can pick it up) plus a class colour (so that globally pooled features can
    too). A sample is mid-grey + amplitude * its class template + per-sample brightness
    shift + heavy per-pixel Gaussian noise, rounded and clipped to uint8. Labels are balanced.
    Train and test come from independent streams, so num_train does not change the test set.
    """
    template_rng, train_rng, test_rng = (np.random.default_rng(s)
                                         for s in np.random.SeedSequence(seed).spawn(3))
    grid = template_rng.standard_normal((num_classes, channels, 4, 4)).astype(np.float32)
    pattern = F.interpolate(torch.from_numpy(grid), size=(image_size, image_size),
                            mode="bilinear", align_corners=False).numpy()
    pattern /= pattern.std(axis=(1, 2, 3), keepdims=True)
    colour = template_rng.standard_normal((num_classes, channels, 1, 1)).astype(np.float32)
    templates = SYNTHETIC_AMPLITUDE * (pattern + colour) / np.sqrt(2.0)

    def split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes)
        x = (128.0 + templates[y]
             + SYNTHETIC_BRIGHTNESS_JITTER * rng.standard_normal((n, 1, 1, 1))
             + SYNTHETIC_NOISE * rng.standard_normal((n, channels, image_size, image_size)))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    return Arrays(*split(train_rng, num_train), *split(test_rng, num_test),
                  tuple(f"class{i}" for i in range(num_classes)))


