"""The fast models against the reference ProGAN, state_dict round trips, architecture facts, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import progan_fast
from progan_fast import reference

SMALL = dict(resolution=64, fmap_base=64, fmap_max=16)  # widths 16, 16, 8, 4, 2 at 4..64
RESOLUTIONS = [4, 8, 16, 32, 64]
ALPHAS = [0.0, 0.37, 1.0]


def randomize(model):
    """Random biases as well as weights, so that bias handling is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def generators():
    torch.manual_seed(1)
    ref = randomize(reference.Generator(**SMALL))
    fast = progan_fast.Generator(**SMALL)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.fixture(scope="module")
def discriminators():
    torch.manual_seed(2)
    ref = randomize(reference.Discriminator(**SMALL))
    fast = progan_fast.Discriminator(**SMALL)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def assert_grads_close(ref, fast):
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        scale = max(p.grad.abs().max().item(), 1e-6)
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_generator_matches_reference(generators, res, alpha):
    ref, fast = generators
    z = torch.randn(3, ref.latent_size)
    ref.zero_grad(set_to_none=True)
    fast.zero_grad(set_to_none=True)
    expected, actual = ref(z, res, alpha), fast(z, res, alpha)
    assert actual.shape == (3, 3, res, res)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(expected)
    (expected * weight).sum().backward()
    (actual * weight).sum().backward()
    assert_grads_close(ref, fast)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_discriminator_matches_reference(discriminators, res, alpha):
    ref, fast = discriminators
    images = torch.randn(8, 3, res, res)
    ref.zero_grad(set_to_none=True)
    fast.zero_grad(set_to_none=True)
    expected, actual = ref(images, alpha), fast(images, alpha)
    assert actual.shape == (8, 1)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    expected.square().sum().backward()
    actual.square().sum().backward()
    assert_grads_close(ref, fast)


def test_alpha_ends_select_one_branch(generators, discriminators):
    """alpha = 0 is the previous resolution upsampled (G) / seen through avgpool (D); a 0-dim tensor alpha
    gives the same result as the float."""
    for model in (*generators,):
        z = torch.randn(2, model.latent_size)
        low = model(z, 16, 1.0)
        torch.testing.assert_close(model(z, 32, 0.0), F.interpolate(low, scale_factor=2.0, mode="nearest"))
        torch.testing.assert_close(model(z, 32, torch.tensor(0.25)), model(z, 32, 0.25))
    for model in (*discriminators,):
        images = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(model(images, 0.0), model(F.avg_pool2d(images, 2), 1.0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(images, torch.tensor(0.6)), model(images, 0.6))


def test_state_dicts_load_both_ways():
    ref_g, fast_g = randomize(reference.Generator(**SMALL)), randomize(progan_fast.Generator(**SMALL))
    ref_d, fast_d = randomize(reference.Discriminator(**SMALL)), randomize(progan_fast.Discriminator(**SMALL))
    for source, target in ((ref_g, fast_g), (fast_g, ref_g), (ref_d, fast_d), (fast_d, ref_d)):
        assert list(source.state_dict()) == list(target.state_dict())
        target.load_state_dict(source.state_dict())  # strict
        for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
            assert torch.equal(a, b), name
    z = torch.randn(2, fast_g.latent_size)
    torch.testing.assert_close(ref_g(z, 64, 0.5), fast_g(z, 64, 0.5))


def test_official_widths_parameters_and_gains():
    G, D = progan_fast.Generator(), progan_fast.Discriminator()
    assert G.latent_size == 512
    assert [G.widths.channels(k) for k in range(9)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert G.blocks[0].dense.weight.shape == (512 * 16, 512) and G.blocks[0].bias.shape == (512,)
    assert G.blocks[0].dense.gain == pytest.approx(math.sqrt(2) / 4)
    assert all(layer.gain == 1.0 and layer.kernel_size == 1 and layer.activation is None for layer in G.to_rgb)
    assert G.blocks[8].conv0.upsample and G.blocks[8].conv1.pixel_norm
    assert D.blocks[0].conv.in_channels == 513 and D.blocks[0].dense0.weight.shape == (512, 512 * 16)
    assert D.blocks[0].dense1.gain == 1.0 and D.blocks[0].dense1.activation is None
    assert D.from_rgb[8].out_channels == 16 and D.blocks[8].conv1.out_channels == 32
    # seeds: 23.1M trainable parameters each
    assert sum(p.numel() for p in G.parameters()) == pytest.approx(23.1e6, rel=0.01)
    assert sum(p.numel() for p in D.parameters()) == pytest.approx(23.1e6, rel=0.01)
    ref = reference.Generator()
    assert ref.blocks[0].dense.scale == pytest.approx(math.sqrt(2) / 4 / math.sqrt(512))
    assert ref.to_rgb[0].scale == pytest.approx(1 / math.sqrt(512))


def test_minibatch_stddev_options():
    no_mbstd = progan_fast.Discriminator(resolution=8, fmap_base=16, fmap_max=4, mbstd_group_size=1)
    assert no_mbstd.blocks[0].conv.in_channels == 4
    whole = progan_fast.Discriminator(resolution=8, fmap_base=16, fmap_max=4, mbstd_group_size=None)
    assert whole(torch.randn(3, 3, 8, 8)).shape == (3, 1)


def test_latent_size_and_channels_options():
    G = progan_fast.Generator(resolution=16, num_channels=1, latent_size=20, fmap_base=32, fmap_max=8)
    D = progan_fast.Discriminator(resolution=16, num_channels=1, fmap_base=32, fmap_max=8)
    images = G(torch.randn(4, 20), 16)
    assert images.shape == (4, 1, 16, 16) and D(images).shape == (4, 1)


@pytest.mark.parametrize("model_cls", [progan_fast.Generator, reference.Generator])
def test_generator_errors(model_cls):
    G = model_cls(**SMALL)
    z = torch.randn(2, G.latent_size)
    for res in (2, 12, 128):
        with pytest.raises(ValueError, match="res must be a power of two from 4 to 64"):
            G(z, res)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        G(z, 8, -0.1)
    with pytest.raises(ValueError, match=rf"latents of shape \[N, {G.latent_size}\]"):
        G(torch.randn(2, 7), 8)


@pytest.mark.parametrize("model_cls", [progan_fast.Discriminator, reference.Discriminator])
def test_discriminator_errors(model_cls):
    D = model_cls(**SMALL)
    with pytest.raises(ValueError, match=r"images of shape \[N, 3, res, res\]"):
        D(torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"images of shape \[N, 3, res, res\]"):
        D(torch.randn(4, 3, 8, 16))
    with pytest.raises(ValueError, match="power of two from 4 to 64"):
        D(torch.randn(4, 3, 12, 12))
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size 4"):
        D(torch.randn(6, 3, 8, 8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=48), "power of two >= 4"),
    (dict(resolution=2), "power of two >= 4"),
    (dict(resolution=1024, fmap_base=64), "leaves no channels"),
])
def test_constructor_errors(kwargs, message):
    for cls in (progan_fast.Generator, progan_fast.Discriminator, reference.Generator, reference.Discriminator):
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)
