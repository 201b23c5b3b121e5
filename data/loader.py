"""Device-resident batches with on-device augmentation (the airbench pattern).

The whole split lives on the device as one uint8 tensor; each batch is sliced, scaled to [0, 1]
and augmented there, so the training loop never waits on DataLoader workers or host copies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

Relabel = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Augment:
    """Random crop after padding by `crop_pad` pixels, then a random horizontal flip. `pad_mode`:
    `zeros` (torchvision's RandomCrop(padding=...), the papers' recipes) or `reflect` (airbench)."""

    crop_pad: int = 0
    flip: bool = False
    pad_mode: str = "zeros"


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images (adversarial examples) pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator,
                mode: str = "zeros") -> torch.Tensor:
    """Per-sample random crop of a padded batch (`mode`: zeros or reflect), done with one gather on
    the device."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad),
                                     mode="constant" if mode == "zeros" else mode)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(x: torch.Tensor, augment: Augment, gen: torch.Generator) -> torch.Tensor:
    """A float batch randomly cropped and flipped as `augment` says, drawing from `gen`."""
    out = random_crop(x, augment.crop_pad, gen, augment.pad_mode)
    return random_flip(out, gen) if augment.flip else out


class Batches:
    """Re-iterable stream of `(x, y, sign)` batches over device-resident images (uint8, or float
    in [0, 1] for adversarial examples).

    Each pass is one epoch with a fresh permutation drawn from a generator seeded once, so the
    sequence of epochs is reproducible. `relabel(y, gen)` may replace the labels each epoch (random
    labelling); `sign` tells `fit` to descend (+1) or ascend (-1) on this stream's loss;
    `augment_mask` limits augmentation to the samples where it is True.
    """

    def __init__(self, x_u8: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool,
                 seed: int, augment: Augment | None = None, drop_last: bool = False,
                 relabel: Relabel | None = None, sign: float = 1.0,
                 channels_last: bool = False, augment_mask: torch.Tensor | None = None):
        if len(x_u8) != len(y):
            raise ValueError(f"{len(x_u8)} images but {len(y)} labels")
        if len(x_u8) == 0:
            raise ValueError("cannot make batches from an empty set")
        self.x, self.y = x_u8, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.relabel, self.sign = augment, relabel, sign
        self.augment_mask = augment_mask
        self.channels_last = channels_last
        self.gen = torch.Generator(device=x_u8.device)
        self.gen.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        if self.drop_last or (n % self.batch_size == 1 and n > 1):
            # A trailing batch of one cannot pass batch norm in train mode: skip it (the sample
            # lands in another batch in the next, reshuffled epoch).
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        n = len(self.x)
        order = (torch.randperm(n, device=self.x.device, generator=self.gen) if self.shuffle
                 else torch.arange(n, device=self.x.device))
        y_all = self.relabel(self.y, self.gen) if self.relabel is not None else self.y
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = to_float(self.x[idx])
            if self.augment is not None:
                x = self._augment(x, idx)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y_all[idx], self.sign


    def images(self, which: slice) -> torch.Tensor:
        """Images `which` of the stream's set as float model inputs: unaugmented, in order."""
        x = to_float(self.x[which])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _augment(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = augment_batch(x, self.augment, self.gen)
        if self.augment_mask is None:
            return out
        return torch.where(self.augment_mask[idx][:, None, None, None], out, x)


class Concat:
    """Several streams run back to back as one epoch (e.g. ascent on D_F, then descent on D_R)."""

    def __init__(self, *streams: Iterable):
        self.streams = streams

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def __iter__(self):
        return itertools.chain.from_iterable(self.streams)


class Zip:
    """Two streams step by step, as one batch each step (NegGrad+'s joint retain and forget
    batches): yields `(x_a, x_b), (y_a, y_b), sign` of `a`. An epoch is `len(a)` steps; `b`
    restarts (its next epoch: a fresh shuffle) whenever it runs out."""

    def __init__(self, a: Iterable, b: Iterable):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a)

    def __iter__(self):
        b = iter(self.b)
        for xa, ya, sign in self.a:
            try:
                xb, yb, _ = next(b)
            except StopIteration:
                b = iter(self.b)
                xb, yb, _ = next(b)
            yield (xa, xb), (ya, yb), sign
