import pytest
import torch

from data.loader import Augment, Batches, Concat, random_crop, random_flip, to_float
from methods.common import random_wrong_labels


def _images(n=6, c=2, h=5, w=5):
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) + 1


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_is_a_window_of_the_padded_image(mode):
    x = _images()
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen, mode)
    # Padding by hand: zeros, or the mirror image without repeating the edge (airbench's).
    padded = torch.zeros(6, 2, 9, 9)
    padded[:, :, 2:7, 2:7] = x
    if mode == "reflect":
        padded[:, :, 2:7, :2], padded[:, :, 2:7, 7:] = x[..., [2, 1]], x[..., [3, 2]]
        padded[:, :, :2], padded[:, :, 7:] = padded[:, :, [4, 3]], padded[:, :, [5, 4]]
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 5, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)  # with 6 samples and 25 shifts, some sample moved
    if mode == "reflect":
        assert float(out.min()) >= 1  # no zero border anywhere


def test_random_flip_flips_about_half_and_only_left_right():
    x = _images(n=200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 60 < int(flipped.sum()) < 140


def test_batches_cover_every_sample_once_per_epoch_and_are_reproducible():
    x = torch.randint(0, 256, (11, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(11)
    a = Batches(x, y, batch_size=3, shuffle=True, seed=7)
    b = Batches(x, y, batch_size=3, shuffle=True, seed=7)
    epoch1 = torch.cat([yb for _, yb, _ in a])
    assert sorted(epoch1.tolist()) == list(range(11))
    epoch2 = torch.cat([yb for _, yb, _ in a])
    assert not torch.equal(epoch1, epoch2)  # reshuffled
    assert torch.equal(epoch1, torch.cat([yb for _, yb, _ in b]))
    xb, _, sign = next(iter(a))
    assert xb.dtype == torch.float32 and float(xb.max()) <= 1.0 and sign == 1.0


def test_trailing_batch_of_one_is_skipped_for_batch_norm():
    x = torch.zeros(7, 1, 2, 2, dtype=torch.uint8)
    sizes = [len(yb) for _, yb, _ in Batches(x, torch.arange(7), batch_size=3, shuffle=False, seed=0)]
    assert sizes == [3, 3]


def test_augmented_batches_stay_in_unit_range():
    x = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    b = Batches(x, torch.zeros(4, dtype=torch.long), batch_size=4, shuffle=False, seed=0,
                augment=Augment(crop_pad=2, flip=True))
    xb, _, _ = next(iter(b))
    assert xb.shape == (4, 3, 8, 8) and float(xb.min()) >= 0 and float(xb.max()) == 1.0


def test_random_wrong_labels_are_wrong_fresh_each_epoch_and_masked():
    y = torch.randint(0, 10, (400,))
    mask = torch.arange(400) >= 200
    b = Batches(torch.zeros(400, 1, 2, 2, dtype=torch.uint8), y, batch_size=400, shuffle=False,
                seed=0, relabel=random_wrong_labels(10, mask))
    e1 = next(iter(b))[1]
    e2 = next(iter(b))[1]
    assert torch.equal(e1[:200], y[:200])
    assert bool((e1[200:] != y[200:]).all()) and bool((e2[200:] != y[200:]).all())
    assert not torch.equal(e1, e2)
    assert set(e1[200:].tolist()) == set(range(10))


def test_concat_runs_streams_back_to_back_with_their_signs():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    a = Batches(x, torch.arange(4), batch_size=2, shuffle=False, seed=0, sign=-1.0)
    b = Batches(x, torch.arange(4), batch_size=4, shuffle=False, seed=0)
    signs = [s for _, _, s in Concat(a, b)]
    assert signs == [-1.0, -1.0, 1.0] and len(Concat(a, b)) == 3


def test_float_images_pass_through_and_augment_mask_spares_them():
    u8 = torch.full((4, 1, 6, 6), 255, dtype=torch.uint8)
    adv = torch.full((4, 1, 6, 6), 0.5)
    x = torch.cat([to_float(u8), adv])
    mask = torch.tensor([True] * 4 + [False] * 4)
    b = Batches(x, torch.arange(8), batch_size=8, shuffle=False, seed=0,
                augment=Augment(crop_pad=2, flip=True), augment_mask=mask)
    xb, _, _ = next(iter(b))
    assert torch.equal(xb[4:], adv)  # adversarial examples are never augmented
    assert bool((xb[:4] == 0).any())  # the crops of the others pulled in zero padding
