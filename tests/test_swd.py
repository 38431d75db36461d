"""SWD against hand-computed cases, its basic behaviour on image sets, and the SWD of a generator."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from progan_fast import reference
from progan_fast.images import to_uint8
from progan_fast.metrics import generator_swd
from progan_fast.metrics.swd import (laplacian_pyramid, normalize_descriptors, pyr_down, pyr_up, pyramid_resolutions,
                                     random_patches, sliced_wasserstein, swd)


def smooth_images(n, res, seed, blur=True):
    """Random smooth colour images as uint8 [n, 3, res, res]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, res // 4, res // 4, generator=g)
    x = F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False) if blur else \
        torch.rand(n, 3, res, res, generator=g)
    return (x * 255).round().to(torch.uint8)


def test_one_dimensional_case_by_hand():
    # In 1-D every unit direction is +-1: SWD is the mean gap between sorted samples, here 1 everywhere.
    a = torch.tensor([[0.0], [3.0], [1.0], [2.0]])
    b = torch.tensor([[4.0], [2.0], [1.0], [3.0]])
    assert sliced_wasserstein(a, b, repeats=3, directions=5) == pytest.approx(1.0, abs=1e-6)
    c = torch.tensor([[0.0], [0.0], [4.0], [4.0]])  # sorted gaps to a: 0, 1, 2, 1
    assert sliced_wasserstein(a, c, repeats=2, directions=4) == pytest.approx(1.0, abs=1e-6)
    d = torch.tensor([[10.0], [10.0], [10.0], [10.0]])  # gaps 10, 9, 8, 7
    assert sliced_wasserstein(a, d) == pytest.approx(8.5, abs=1e-5)


def test_pyramid_by_hand():
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[0, 0, 4, 4] = 256.0
    down = pyr_down(impulse)
    assert down.shape == (1, 1, 4, 4)
    assert down[0, 0, 2, 2].item() == pytest.approx(36.0)  # centre tap of the 5x5 binomial filter (/256)
    assert down[0, 0, 1, 2].item() == pytest.approx(6.0)  # two rows above the impulse: taps 1 (y) * 6 (x)
    assert down[0, 0, 1, 1].item() == pytest.approx(1.0)  # two rows and two columns away: the corner tap
    constant = torch.full((2, 3, 32, 32), 7.0)
    pyramid = laplacian_pyramid(constant, 2)
    assert pyramid[0].abs().max().item() < 1e-5 and torch.allclose(pyramid[1], torch.full((2, 3, 16, 16), 7.0))
    image = torch.rand(1, 3, 32, 32) * 255
    band, low = laplacian_pyramid(image, 2)
    torch.testing.assert_close(band + pyr_up(low), image)
    assert pyramid_resolutions(128) == [128, 64, 32, 16] and pyramid_resolutions(8) == [8]


def test_patches_and_normalisation():
    level = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).reshape(2, 3, 9, 9)
    patches = random_patches(level, 5, 7, torch.Generator().manual_seed(0))
    assert patches.shape == (10, 3, 7, 7)
    # Centres 3..5 in a 9x9 image: every patch is a 7x7 window of its own image, found from its first pixel.
    for patch, image in zip(patches, level.repeat_interleave(5, dim=0)):
        top, left = int(patch[0, 0, 0] - image[0, 0, 0]) // 9, int(patch[0, 0, 0] - image[0, 0, 0]) % 9
        torch.testing.assert_close(patch, image[:, top:top + 7, left:left + 7])
    desc = normalize_descriptors(torch.randn(50, 3, 7, 7) * torch.tensor([1.0, 5.0, 0.1]).reshape(1, 3, 1, 1) + 3)
    per_channel = desc.reshape(50, 3, 49)
    torch.testing.assert_close(per_channel.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)


def test_identical_sets_give_zero_and_different_distributions_clearly_more():
    a = smooth_images(96, 16, seed=1)
    same = swd(a, a.clone(), patches_per_image=64)
    other = swd(a, smooth_images(96, 16, seed=2), patches_per_image=64)  # same distribution, other samples
    noise = swd(a, smooth_images(96, 16, seed=3, blur=False), patches_per_image=64)  # another distribution
    assert set(same) == {"16", "mean"} and same["mean"] == 0.0
    assert noise["mean"] > 2 * other["mean"] > 0


def test_to_uint8_and_shape_errors():
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="same shape"):
        swd(torch.zeros(2, 3, 16, 16), torch.zeros(3, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 7x7"):
        swd(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


class ShowsTheseImages(torch.nn.Module):
    """A "generator" whose samples are given images in [-1, 1], whatever the latents."""

    latent_size = 8

    def __init__(self, images):
        super().__init__()
        self.images = images

    def forward(self, z, res, alpha=1.0):
        return self.images[:len(z)]


def test_generator_swd_compares_samples_with_the_reals():
    reals = smooth_images(48, 16, seed=1)
    as_floats = reals.float() / 127.5 - 1
    assert generator_swd(ShowsTheseImages(as_floats), reals, 16)["mean"] == 0.0
    noise = smooth_images(48, 16, seed=3, blur=False).float() / 127.5 - 1
    assert generator_swd(ShowsTheseImages(noise), reals, 16)["mean"] > 0
    G = reference.Generator(16, fmap_base=32, fmap_max=16).eval()
    assert generator_swd(G, reals, 16, seed=5) == generator_swd(G, reals, 16, seed=5)  # same seed, same latents
    assert generator_swd(G, reals, 16, seed=5) != generator_swd(G, reals, 16, seed=6)


def test_the_metrics_library_does_not_need_the_trainer():
    code = ("import sys, progan_fast.metrics; "
            "assert not [name for name in sys.modules if name.startswith('progan_fast.training')]")
    subprocess.run([sys.executable, "-c", code], check=True)
