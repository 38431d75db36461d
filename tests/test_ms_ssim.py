"""MS-SSIM against a direct NumPy/SciPy transcription of its formula (Wang et al. 2003, with the official ProGAN
code's shrinking window and channel averaging), on random small images; and its basic behaviour."""
import numpy as np
import pytest
import torch
from scipy import signal

from progan_fast.metrics.ms_ssim import ms_ssim, ms_ssim_per_pair, pairs_ms_ssim

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def formula_terms(a, b):
    """(SSIM, contrast-structure) per image of float64 NHWC arrays, by FFT convolution with a Gaussian window."""
    size = min(11, a.shape[1], a.shape[2])
    sigma = size * 1.5 / 11
    coords = np.arange(size) - (size - 1) / 2  # centred: between the middle two pixels for even sizes
    window = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma ** 2))
    window = (window / window.sum())[None, :, :, None]
    blur = lambda x: signal.fftconvolve(x, window, mode="valid")  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    ssim = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1) * cs
    return ssim.mean(axis=(1, 2, 3)), cs.mean(axis=(1, 2, 3))


def formula_ms_ssim(a, b):
    a, b = (x.permute(0, 2, 3, 1).double().numpy() for x in (a, b))
    terms = []
    for _ in WEIGHTS:
        terms.append(formula_terms(a, b))
        a, b = ((x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4 for x in (a, b))
    cs = np.clip([t[1] for t in terms[:-1]], 0, None)
    ssim = np.clip(terms[-1][0], 0, None)
    return np.prod(cs ** WEIGHTS[:-1, None], axis=0) * ssim ** WEIGHTS[-1]


def related_pairs(n, res, seed, noise):
    """Random smooth uint8 images and copies with uniform noise of +-`noise` levels."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, res // 4, res // 4, generator=g) * 255
    a = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    b = a + (torch.rand(a.shape, generator=g) * 2 - 1) * noise
    return a.round().clamp(0, 255).to(torch.uint8), b.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("res, noise, seed", [(16, 10, 0), (16, 60, 1), (32, 30, 2), (64, 90, 3)])
def test_matches_the_formula_on_random_images(res, noise, seed):
    a, b = related_pairs(5, res, seed, noise)
    expected = formula_ms_ssim(a, b)
    found = ms_ssim_per_pair(a, b)
    assert 0.05 < expected.min() and expected.max() < 0.999  # neither trivially 0 nor 1
    np.testing.assert_allclose(found.double().numpy(), expected, rtol=2e-5, atol=1e-6)
    assert ms_ssim(a, b) == pytest.approx(expected.mean(), rel=2e-5)


def test_identical_images_give_one_and_independent_noise_little():
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert ms_ssim(images, images) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(images, torch.randint(0, 256, images.shape, generator=g, dtype=torch.uint8)) < 0.15
    more_alike, less_alike = (ms_ssim(*related_pairs(8, 32, 5, noise)) for noise in (20, 80))
    assert 1 > more_alike > less_alike > 0


def test_pairs_are_consecutive_images_and_bad_sets_are_refused():
    a, b = related_pairs(6, 16, 6, 40)
    interleaved = torch.stack([a, b], dim=1).flatten(0, 1)  # a0 b0 a1 b1 ...
    assert pairs_ms_ssim(torch.cat([interleaved, a[:1]])) == pytest.approx(ms_ssim(a, b), rel=1e-6)  # odd one out
    with pytest.raises(ValueError, match="needs images of at least 16x16, got 8x8"):
        ms_ssim(a[:, :, :8, :8], b[:, :, :8, :8])
    with pytest.raises(ValueError, match="of the same shape"):
        ms_ssim(a, b[:3])
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        pairs_ms_ssim(a[:1])
