"""Generator and discriminator: sizes, parameter count, channel handling and input checks."""

from __future__ import annotations

import pytest
import torch

from vox2vox.errors import Vox2VoxError
from vox2vox.model.discriminator import Discriminator, DiscriminatorConfig
from vox2vox.model.generator import Generator, GeneratorConfig, count_parameters


def tiny_generator(**kw) -> Generator:
    options = {"in_channels": 2, "n_classes": 3, "base_filters": 4, "max_filters": 16, "depth": 3}
    options.update(kw)
    torch.manual_seed(0)
    return Generator(GeneratorConfig(**options))


@pytest.mark.slow
def test_default_generator_is_150m_parameters_and_maps_128_cubed_to_probabilities():
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig()).eval()
    assert abs(count_parameters(generator) - 150_000_000) <= 2_000_000
    with torch.inference_mode():
        probs = generator(torch.randn(1, 4, 128, 128, 128))
    assert probs.shape == (1, 4, 128, 128, 128)
    assert probs.dtype == torch.float32
    assert float(probs.min()) >= 0.0
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 128, 128, 128), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("depth", "kernel_size", "blocks", "size"),
    [(2, 4, 0, (8, 12, 16)), (3, 3, 1, (16, 16, 24)), (3, 4, 2, (16, 24, 16)), (3, 5, 1, (16, 16, 16)),
     (4, 2, 3, (32, 32, 16)), (2, 6, 1, (12, 8, 8))],
)
def test_generator_output_size_equals_input_size(depth, kernel_size, blocks, size):
    generator = tiny_generator(depth=depth, kernel_size=kernel_size, bottleneck_blocks=blocks)
    x = torch.randn(2, 2, *size)
    probs = generator(x)
    assert probs.shape == (2, 3, *size)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, *size))
    logits = generator(x, return_logits=True)
    assert logits.shape == (2, 3, *size)


def test_generator_bottleneck_blocks_concatenate_and_double_channels():
    generator = tiny_generator(bottleneck_blocks=2, max_filters=8)
    seen = []
    generator.bottleneck[1].register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], o.shape[1])))
    generator(torch.randn(1, 2, 16, 16, 16))
    assert seen == [(16, 16)]  # 8 filters -> concat(act(norm(y)), y) -> 16 channels in and out


def test_generator_backward_reaches_every_parameter():
    generator = tiny_generator(bottleneck_blocks=1)
    generator(torch.randn(1, 2, 16, 16, 16), return_logits=True).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())


@pytest.mark.parametrize("size", [(12, 16, 16), (16, 16, 20), (7, 8, 8)])
def test_generator_rejects_sizes_not_multiple_of_2_to_depth(size):
    generator = tiny_generator(depth=3)
    with pytest.raises(Vox2VoxError) as err:
        generator(torch.randn(1, 2, *size))
    message = str(err.value)
    assert "multiple of 8" in message
    assert "16" in message and "32" in message  # names sizes that work


def test_generator_rejects_a_one_voxel_bottleneck_with_a_clear_error():
    generator = tiny_generator(depth=3)
    with pytest.raises(Vox2VoxError, match="too small"):
        generator(torch.randn(1, 2, 8, 8, 8))
    assert generator(torch.randn(1, 2, 8, 8, 16)).shape == (1, 3, 8, 8, 16)


def test_generator_rejects_wrong_channel_count_and_rank():
    generator = tiny_generator()
    with pytest.raises(Vox2VoxError, match="2 input channels, got 4"):
        generator(torch.randn(1, 4, 16, 16, 16))
    with pytest.raises(Vox2VoxError, match=r"\(B, C, D, H, W\)"):
        generator(torch.randn(2, 16, 16, 16))


@pytest.mark.parametrize(
    "kwargs",
    [{"depth": 1}, {"depth": 8}, {"kernel_size": 1}, {"dropout": 1.0}, {"norm": "group"},
     {"in_channels": 0}, {"base_filters": True}, {"bottleneck_blocks": -1}],
)
def test_generator_config_rejects_bad_values(kwargs):
    with pytest.raises(Vox2VoxError):
        GeneratorConfig(**kwargs)


def test_discriminator_with_different_image_and_class_channels():
    torch.manual_seed(0)
    config = DiscriminatorConfig(in_channels=2, n_classes=5, base_filters=4, max_filters=16)
    disc = Discriminator(config)
    assert disc.net[0].in_channels == 7
    image, seg = torch.randn(2, 2, 32, 32, 32), torch.softmax(torch.randn(2, 5, 32, 32, 32), dim=1)
    scores = disc(image, seg).detach()
    n = config.output_size(32)
    assert scores.shape == (2, 1, n, n, n)
    # Raw scores (no sigmoid): least-squares GAN targets 0 and 1 and the scores are unbounded.
    assert float(scores.min()) < 0.0 or float(scores.max()) > 1.0
    with pytest.raises(Vox2VoxError, match="2 channels and segmentation with 5"):
        disc(seg, image)  # swapped inputs, the predecessors' bug


def test_discriminator_score_map_sizes():
    config = DiscriminatorConfig()
    assert config.output_size(128) == 14  # METHOD.md: 14^3 for a 128^3 input
    small = DiscriminatorConfig(base_filters=2, max_filters=8)
    disc = Discriminator(small)
    for size in (24, 32, 48):
        out = disc(torch.randn(1, 4, size, size, size), torch.rand(1, 4, size, size, size))
        assert out.shape[2:] == (small.output_size(size),) * 3


def test_discriminator_rejects_too_small_patches_and_mismatched_sizes():
    config = DiscriminatorConfig(base_filters=2, max_filters=8)
    disc = Discriminator(config)
    assert config.min_input_size() == 24
    with pytest.raises(Vox2VoxError, match="too small.*at least 24"):
        disc(torch.randn(1, 4, 16, 16, 16), torch.rand(1, 4, 16, 16, 16))
    with pytest.raises(Vox2VoxError, match="differ in size"):
        disc(torch.randn(1, 4, 32, 32, 32), torch.rand(1, 4, 32, 32, 24))


@pytest.mark.parametrize(("kernel_size", "n_strided"), [(3, 3), (3, 2), (2, 2), (5, 1), (4, 2)])
def test_discriminator_minimum_size_is_exact_for_any_kernel(kernel_size, n_strided):
    # With odd kernels a normalised layer could shrink to 1^3 (instance norm then fails) while the
    # score map is still non-empty: min_input_size accounts for that.
    config = DiscriminatorConfig(base_filters=2, max_filters=8, kernel_size=kernel_size, n_strided=n_strided)
    disc = Discriminator(config)
    m = config.min_input_size()
    for size in (m, m + 3):
        out = disc(torch.randn(1, 4, size, size, size), torch.rand(1, 4, size, size, size))
        assert out.shape[2:] == (config.output_size(size),) * 3
    with pytest.raises(Vox2VoxError, match=f"at least {m} voxels"):
        disc(torch.randn(1, 4, m - 1, m - 1, m - 1), torch.rand(1, 4, m - 1, m - 1, m - 1))
