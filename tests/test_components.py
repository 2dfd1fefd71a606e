"""Built-in components: shapes, parameter counts and semantics of the official CycleGAN code."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from unpaired.plugin_api.components import LossWeights
from unpaired.training.weight_init import init_weights


def norm(registry, name="instance", **params):
    return registry.build("norm", {"name": name, **params})


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("n_blocks", "expected"), [(9, 11_378_179), (6, 7_837_699)])
def test_resnet_parameter_counts_match_the_official_generator(registry, n_blocks, expected):
    generator = registry.build("generator", {"name": "resnet", "n_blocks": n_blocks, "ngf": 64}, norm(registry))
    assert count(generator) == expected


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_resnet_keeps_the_image_shape_and_range(registry, size):
    torch.manual_seed(0)
    generator = registry.build("generator", {"name": "resnet", "n_blocks": 2, "ngf": 8}, norm(registry))
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = generator(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0


def test_resnet_has_n_residual_blocks_and_optional_dropout(registry):
    generator = registry.build("generator", {"name": "resnet", "n_blocks": 3, "ngf": 8, "dropout": 0.5}, norm(registry))
    dropouts = [m for m in generator.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and dropouts[0].p == 0.5
    reflect = [m for m in generator.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert [m.padding for m in reflect] == [(3, 3, 3, 3)] + [(1, 1, 1, 1)] * 6 + [(3, 3, 3, 3)]  # 7x7 convs and every 3x3 in the blocks


def test_conv_bias_only_where_the_norm_has_no_learned_shift(registry):
    def biases(norm_name):
        generator = registry.build("generator", {"name": "resnet", "n_blocks": 1, "ngf": 8}, norm(registry, norm_name))
        convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        return [m.bias is not None for m in convs]

    assert all(biases("instance"))
    assert all(biases("none"))
    with_batch = biases("batch")
    assert with_batch[-1] and not any(with_batch[:-1])  # only the output conv, which has no norm after it


def test_patchgan_has_the_official_parameter_count_and_patch_map(registry):
    disc = registry.build("discriminator", {"name": "patchgan"}, norm(registry))
    assert count(disc) == 2_764_737
    small = registry.build("discriminator", {"name": "patchgan", "ndf": 8}, norm(registry))
    for size, side in [(32, 2), (64, 6), (128, 14), (256, 30)]:
        assert small(torch.randn(2, 3, size, size)).shape == (2, 1, side, side)


def test_patchgan_sees_70x70_patches(registry):
    disc = registry.build("discriminator", {"name": "patchgan", "ndf": 4}, norm(registry, "none"))
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = disc(x)
    out[0, 0, 7, 7].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_pooled_discriminator_gives_one_score_per_image_from_the_same_trunk(registry):
    torch.manual_seed(0)
    pooled = registry.build("discriminator", {"name": "pooled", "ndf": 8}, norm(registry))
    patch = registry.build("discriminator", {"name": "patchgan", "ndf": 8}, norm(registry))
    patch.load_state_dict({k.removeprefix("trunk."): v for k, v in pooled.state_dict().items()})
    x = torch.randn(3, 3, 64, 64)
    assert pooled(x).shape == (3, 1)
    torch.testing.assert_close(pooled(x), patch(x).mean(dim=(2, 3)))
    assert count(registry.build("discriminator", {"name": "pooled"}, norm(registry))) == 2_764_737


def test_norms(registry):
    instance = norm(registry)(16)
    assert isinstance(instance, nn.InstanceNorm2d) and not instance.affine and not instance.track_running_stats
    assert count(instance) == 0
    batch = norm(registry, "batch")(16)
    assert isinstance(batch, nn.BatchNorm2d) and batch.affine and batch.track_running_stats
    assert isinstance(norm(registry, "none")(16), nn.Identity)
    assert not norm(registry).has_affine_shift and norm(registry, "instance", affine=True).has_affine_shift
    assert norm(registry, "batch").has_affine_shift and not norm(registry, "none").has_affine_shift


def test_lsgan_is_mse_to_labels(registry):
    loss = registry.build("gan_loss", {"name": "lsgan"})
    assert loss.generator_loss(torch.tensor([0.5, -1.0])).item() == pytest.approx((0.25 + 4.0) / 2)
    assert loss.discriminator_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.5])).item() == pytest.approx(0.5 + 0.25)
    assert loss.regularizer(nn.Identity(), torch.zeros(1), torch.zeros(1)) is None


def test_vanilla_is_bce_with_logits(registry):
    loss = registry.build("gan_loss", {"name": "vanilla"})
    zero = torch.zeros(4, 1, 2, 2)
    assert loss.generator_loss(zero).item() == pytest.approx(math.log(2))
    assert loss.discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert loss.discriminator_loss(torch.full((2,), 20.0), torch.full((2,), -20.0)).item() < 1e-8


def test_hinge(registry):
    loss = registry.build("gan_loss", {"name": "hinge"})
    assert loss.discriminator_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])).item() == pytest.approx(0.25 + 0.5)
    assert loss.generator_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1)


def test_wgangp_penalises_gradient_norms_away_from_one(registry):
    loss = registry.build("gan_loss", {"name": "wgangp"})
    weight = torch.zeros(3, 4, 4)
    weight[0, 0, :] = 1.5  # ||w|| = 3
    critic = LinearCritic(weight)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    penalty = loss.regularizer(critic, real, fake)
    assert penalty.item() == pytest.approx(10.0 * (3.0 - 1.0) ** 2)
    penalty.backward()
    assert critic.weight.grad.abs().sum() > 0  # the penalty trains the critic
    assert loss.discriminator_loss(torch.tensor([2.0]), torch.tensor([-1.0])).item() == pytest.approx(-3.0)


def pool(registry, seed=0, **params):
    return registry.build("image_pool", {"name": "history", **params}, seed)


def numbered(i: int) -> torch.Tensor:
    return torch.full((1, 3, 2, 2), float(i))


def test_pool_of_size_zero_and_none_pass_images_through(registry):
    images = torch.randn(4, 3, 8, 8)
    assert pool(registry, size=0).query(images) is images
    assert registry.build("image_pool", {"name": "none"}, 0).query(images) is images


def test_history_pool_returns_new_images_while_filling_then_a_mix_at_the_stated_rate(registry):
    for probability in (0.5, 0.2):
        history = pool(registry, seed=1, size=50, swap_probability=probability)
        returned = [int(history.query(numbered(i)).flatten()[0]) for i in range(4050)]
        assert returned[:50] == list(range(50))
        after = returned[50:]
        old = [i for i, r in zip(range(50, 4050), after) if r != i]
        assert all(after[i - 50] < i for i in old)  # only past images come back
        assert abs(len(old) / len(after) - probability) < 0.025


def test_history_pool_handles_batches_and_never_swaps_at_probability_zero(registry):
    history = pool(registry, size=3, swap_probability=0.0)
    batch = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    torch.testing.assert_close(history.query(batch), batch)
    again = batch + 10
    torch.testing.assert_close(history.query(again), again)


def test_history_pool_uses_only_its_own_seeded_rng(registry):
    def sequence(seed):
        history = pool(registry, seed=seed, size=5)
        random.seed(seed * 7 + 1)  # global state must not matter
        torch.manual_seed(seed * 3)
        return [int(history.query(numbered(i)).flatten()[0]) for i in range(60)]

    assert sequence(0) == sequence(0)
    assert sequence(0) != sequence(1)


def test_history_pool_state_round_trips_exactly(registry):
    first = pool(registry, size=10)
    for i in range(25):
        first.query(numbered(i))
    second = pool(registry, seed=99, size=10)
    second.load_state_dict(first.state_dict())
    for i in range(25, 60):
        torch.testing.assert_close(first.query(numbered(i)), second.query(numbered(i)))


def test_loss_weight_policies(registry):
    constant = registry.build("loss_weights", {"name": "constant"})
    assert constant.at(0, 200) == constant.at(199, 200) == LossWeights(adversarial=1.0, cycle=10.0, identity=5.0)
    decay = registry.build("loss_weights", {"name": "identity_decay", "identity": 4.0})
    assert [decay.at(epoch, 10).identity for epoch in (0, 5, 9)] == pytest.approx([4.0, 2.0, 0.4])
    assert decay.at(9, 10).cycle == 10.0


def test_weight_init_schemes(registry):
    generator = registry.build("generator", {"name": "resnet", "n_blocks": 2, "ngf": 32}, norm(registry, "batch"))
    init_weights(generator)
    conv_weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, nn.Conv2d)])
    assert conv_weights.mean().abs() < 1e-3 and conv_weights.std().item() == pytest.approx(0.02, rel=0.02)
    biases = [m.bias for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m.bias is not None]
    assert all((b == 0).all() for b in biases)
    bn_scales = torch.cat([m.weight for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn_scales.mean().item() == pytest.approx(1.0, abs=0.01)

    # a residual block's 3x3 conv, 128 -> 128 channels: fan_in = fan_out = 128 * 9 = 1152, 147,456 weights
    block_conv = next(m for m in generator.modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels == 128)
    torch.manual_seed(0)
    init_weights(generator, "xavier", gain=1.5)
    assert block_conv.weight.std().item() == pytest.approx(1.5 * math.sqrt(2 / (1152 + 1152)), rel=0.02)
    init_weights(generator, "kaiming", gain=1.5)  # the gain is not used: He et al.'s sqrt(2 / fan_in)
    assert block_conv.weight.std().item() == pytest.approx(math.sqrt(2 / 1152), rel=0.02)
    init_weights(generator, "orthogonal", gain=0.5)
    rows = block_conv.weight.flatten(1)  # (128, 1152): orthogonal rows of norm 0.5
    torch.testing.assert_close(rows @ rows.T, 0.25 * torch.eye(128), atol=1e-5, rtol=0)
    assert all((b == 0).all() for b in biases)
    with pytest.raises(ValueError, match="unknown init scheme 'uniform'"):
        init_weights(generator, "uniform")


def test_ralsgan_judges_fakes_against_the_average_real(registry):
    loss = registry.build("gan_loss", {"name": "ralsgan"})
    assert loss.compares_with_real
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.5, -0.5])  # means 1 and 0
    # D: (real - 0 - 1)^2 mean = (1 + 1) / 2 = 1; (fake - 1 + 1)^2 mean = 0.25
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(1.0 + 0.25)
    # G: (fake - 1 - 1)^2 mean = (2.25 + 6.25) / 2 = 4.25; (real - 0 + 1)^2 mean = (9 + 1) / 2 = 5
    assert loss.generator_loss(fake, real).item() == pytest.approx(4.25 + 5.0)
