"""Tests for models/: shapes on every dataset geometry, memory formats, bf16,
the input Normalize layer, ResNet-18 variants (AMUN halving, no BN),
determinism and a learning smoke test."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from torch import nn

from models.layers import Normalize
from models.resnet import BasicBlock, ResNet18
from models.small import SmallCNN
from models.vgg import VGG19BN

# (image_size, channels) of digits 8x8x1, MNIST, CIFAR, Tiny-ImageNet
GEOMETRIES = [(8, 1), (28, 1), (32, 3), (64, 3)]
MODELS = [ResNet18, VGG19BN, SmallCNN]
NUM_CLASSES = 10


def data_kwargs(image_size: int, channels: int, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    return dict(num_classes=num_classes, in_channels=channels, image_size=image_size,
                mean=[0.5] * channels, std=[0.25] * channels)


@functools.lru_cache(maxsize=None)
def _cached(cls: type, image_size: int, channels: int) -> nn.Module:
    torch.manual_seed(0)
    return cls(**data_kwargs(image_size, channels))


def build(cls: type, image_size: int, channels: int) -> nn.Module:
    """Fresh copy of a seeded model; building VGG/ResNet repeatedly is slow."""
    return copy.deepcopy(_cached(cls, image_size, channels))


def images(image_size: int, channels: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, image_size, image_size, generator=gen)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- Normalize

def test_normalize_matches_formula() -> None:
    norm = Normalize(mean=[0.5, 0.25], std=[0.5, 2.0])
    x = torch.tensor([[[[0.0, 1.0]], [[0.25, 1.0]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.375]]]])
    torch.testing.assert_close(norm(x), expected)


def test_normalize_stats_are_buffers_saved_and_moved() -> None:
    norm = Normalize(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert list(norm.parameters()) == []
    assert norm.mean.shape == norm.std.shape == (1, 3, 1, 1)
    state = norm.state_dict()
    torch.testing.assert_close(state["std"].flatten(), torch.tensor([0.4, 0.5, 0.6]))
    moved = norm.to(torch.float64)
    assert moved.mean.dtype == moved.std.dtype == torch.float64
    if torch.cuda.is_available():
        assert norm.to("cuda").mean.device.type == "cuda"
    # and inside a model they travel with its state_dict
    assert {"normalize.mean", "normalize.std"} <= set(build(SmallCNN, 8, 1).state_dict())


@pytest.mark.parametrize("cls", MODELS)
def test_bad_normalization_is_rejected(cls: type) -> None:
    with pytest.raises(ValueError, match="in_channels"):
        cls(num_classes=10, in_channels=3, image_size=32, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="positive"):
        cls(num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.0])


# --------------------------------------------------------------------------- forward

@pytest.mark.parametrize("size,channels", GEOMETRIES)
@pytest.mark.parametrize("cls", MODELS)
def test_forward_shape_features_and_memory_format(cls: type, size: int, channels: int) -> None:
    model = build(cls, size, channels)
    x = images(size, channels)
    out_train = model.train()(x)  # batch statistics path used in training
    assert out_train.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out_train).all()

    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
        assert feats.shape == (2, model.fc.in_features)
        torch.testing.assert_close(model.fc(feats), out)

        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(out_cl).all()
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,channels", GEOMETRIES)
@pytest.mark.parametrize("cls", MODELS)
def test_bf16_autocast(cls: type, size: int, channels: int) -> None:
    model = build(cls, size, channels).eval()
    x = images(size, channels)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert out.dtype == torch.bfloat16  # the autocast actually took effect
    assert torch.isfinite(out).all()
    # bf16 has ~3 significant digits; compare relative to the logit scale
    scale = reference.abs().max().item() + 1e-3
    assert (out.float() - reference).abs().max().item() < 0.05 * scale


def test_vgg_pools_shrink_to_one_pixel_without_crashing() -> None:
    expected_pools = {8: 3, 28: 4, 32: 5, 64: 5}  # 8->4->2->1, 28->14->7->3->1
    keys = None
    for size, channels in GEOMETRIES:
        model = build(VGG19BN, size, channels)
        pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
        assert len(pools) == expected_pools[size]
        assert model.final_size == (2 if size == 64 else 1)
        state_keys = list(model.state_dict())
        keys = keys or state_keys
        assert state_keys == keys  # Identity placeholders keep checkpoints compatible


# --------------------------------------------------------------------------- ResNet-18

def test_resnet18_parameter_count() -> None:
    assert n_params(build(ResNet18, 32, 3)) == 11_173_962


def test_other_parameter_counts() -> None:
    assert n_params(build(VGG19BN, 32, 3)) == 20_040_522
    small = build(SmallCNN, 32, 3)
    assert n_params(small) == 94_762 < 150_000


def _resnet_pair() -> tuple[ResNet18, ResNet18]:
    plain = build(ResNet18, 32, 3)
    halved = ResNet18(**data_kwargs(32, 3), halve_downsample=True)
    halved.load_state_dict(plain.state_dict())  # strict: keys and shapes identical
    return plain.eval(), halved.eval()


def test_halve_downsample_keeps_parameters_changes_outputs() -> None:
    plain, halved = _resnet_pair()
    assert list(plain.state_dict()) == list(halved.state_dict())
    for (name, p), (_, q) in zip(plain.state_dict().items(), halved.state_dict().items()):
        assert p.shape == q.shape and torch.equal(p, q), name
    x = images(32, 3)
    with torch.no_grad():
        assert not torch.allclose(plain(x), halved(x))
    scales = [b.out_scale for b in halved.blocks()]
    assert scales == [1.0, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0]  # first block of stages 2-4


def test_halved_blocks_output_half_of_plain_blocks() -> None:
    plain, halved = _resnet_pair()
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.register_forward_hook(lambda m, inp, out: captured.append((inp[0], out)))
             for b in halved.blocks()]
    with torch.no_grad():
        halved(images(32, 3))
        for plain_block, (block_in, block_out) in zip(plain.blocks(), captured):
            reference = plain_block(block_in)  # same weights, no halving
            factor = 0.5 if plain_block.downsample else 1.0
            torch.testing.assert_close(block_out, factor * reference)
    for hook in hooks:
        hook.remove()
    assert len(captured) == 8


def test_single_block_halving_is_exact() -> None:
    torch.manual_seed(0)
    plain = BasicBlock(8, 16, stride=2).eval()
    halved = BasicBlock(8, 16, stride=2, halve=True).eval()
    halved.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(halved(x), plain(x) / 2)
    identity_block = BasicBlock(8, 8, stride=1, halve=True)
    assert not identity_block.downsample and identity_block.out_scale == 1.0


def test_resnet_without_batch_norm() -> None:
    torch.manual_seed(0)
    model = ResNet18(**data_kwargs(8, 1), batch_norm=False, halve_downsample=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    out = model(images(8, 1))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("cls", MODELS)
def test_same_seed_same_weights(cls: type) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return cls(**data_kwargs(8, 1)).state_dict()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])


def test_small_cnn_can_fit_a_batch() -> None:
    torch.manual_seed(0)
    model = SmallCNN(**data_kwargs(8, 1)).train()
    x = images(8, 1, batch=32)
    y = torch.randint(0, NUM_CLASSES, (32,), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_hydra_instantiate_with_listconfig() -> None:
    """The configs build models by _target_ with mean/std as ListConfig."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "models.resnet.ResNet18", **data_kwargs(8, 1),
                            "halve_downsample": True})
    model = instantiate(cfg)
    assert isinstance(model, ResNet18) and model.halve_downsample
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor([0.25]))
