"""Each drop-in layer and functional op against its formula in docs/progan.md, written independently here."""
import math

import pytest
import torch
import torch.nn.functional as F

import progan_fast
import progan_fast.functional as PF

RTOL = 1e-5  # fp32 against an fp64 formula, relative to the largest magnitude of the expected tensor


def lrelu(x, slope=0.2):
    return torch.where(x >= 0, x, slope * x)


def nearest_up(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def avgpool(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def pixel_norm_formula(a, eps=1e-8):
    """b = a / sqrt(1/N sum_j (a^j)^2 + eps) over the N feature maps."""
    return a / torch.sqrt((a ** 2).mean(dim=1, keepdim=True) + eps)


def conv_formula(x, weight, bias, gain, padding):
    """Equalized conv as an explicit GEMM over unfolded patches."""
    out, cin, k, _ = weight.shape
    n, _, h, w = x.shape
    cols = F.unfold(x, k, padding=padding)  # [N, cin*k*k, L]
    y = (weight.reshape(out, -1) * gain / math.sqrt(cin * k * k)) @ cols
    y = y.reshape(n, out, h + 2 * padding - k + 1, w + 2 * padding - k + 1)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def assert_close(actual, expected, rtol=RTOL):
    expected = expected.double()
    atol = rtol * max(expected.abs().max().item(), 1e-3)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def assert_matches_formula(module, formula, x):
    """Forward and input gradient of `module` on fp32 x against `formula` on the same values in fp64."""
    x.requires_grad_()
    y = module(x)
    x64 = x.detach().double().requires_grad_()
    expected = formula(x64)
    assert y.shape == expected.shape
    assert_close(y, expected)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad.double())
    assert_close(x.grad, x64.grad)


def randomize(module):
    """Non-zero biases, so that a missing or scaled bias shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return module


@pytest.mark.parametrize("cin,cout,k,size,upsample,activation,pixel_norm,bias", [
    (3, 5, 3, 7, False, "lrelu", False, True),
    (5, 7, 1, 5, False, None, False, True),
    (7, 3, 3, 5, True, "lrelu", True, True),
    (4, 6, 3, 1, False, "lrelu", True, False),
    (6, 5, 1, 3, True, "linear", False, True),
    (3, 4, 5, 6, False, "lrelu", False, True),
])
def test_equalized_conv2d_matches_formula(cin, cout, k, size, upsample, activation, pixel_norm, bias):
    layer = randomize(progan_fast.EqualizedConv2d(cin, cout, k, bias=bias, gain=1.7, activation=activation,
                                                  pixel_norm=pixel_norm, upsample=upsample))
    x = torch.randn(3, cin, size, size, requires_grad=True)
    y = layer(x)

    x64 = x.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    b64 = layer.bias.detach().double().requires_grad_() if bias else None
    expected = conv_formula(nearest_up(x64) if upsample else x64, w64, b64, 1.7, k // 2)
    if activation == "lrelu":
        expected = lrelu(expected)
    if pixel_norm:
        expected = pixel_norm_formula(expected)
    assert y.shape == expected.shape == (3, cout, size * (2 if upsample else 1), size * (2 if upsample else 1))
    assert_close(y, expected)

    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad.double())
    assert_close(x.grad, x64.grad)
    assert_close(layer.weight.grad, w64.grad)
    if bias:
        assert_close(layer.bias.grad, b64.grad)


def test_equalized_conv2d_storage_and_defaults():
    layer = progan_fast.EqualizedConv2d(64, 96, 3)
    assert layer.weight.shape == (96, 64, 3, 3) and layer.bias.shape == (96,)
    assert torch.all(layer.bias == 0)
    assert abs(layer.weight.mean().item()) < 0.02 and abs(layer.weight.std().item() - 1) < 0.02  # N(0, 1)
    assert layer.padding == 1 and layer.gain == pytest.approx(math.sqrt(2))
    assert progan_fast.EqualizedConv2d(3, 4, 1).padding == 0
    assert progan_fast.EqualizedConv2d(3, 4, 3, bias=False).bias is None


def test_equalized_conv2d_explicit_padding():
    layer = randomize(progan_fast.EqualizedConv2d(3, 2, 4, padding=0))
    x = torch.randn(2, 3, 6, 6)
    assert_close(layer(x), conv_formula(x.double(), layer.weight.double(), layer.bias.double(), math.sqrt(2), 0))


def test_equalized_conv2d_accepts_channels_last_and_non_contiguous_input():
    layer = randomize(progan_fast.EqualizedConv2d(5, 3, 3, activation="lrelu", pixel_norm=True))
    x = torch.randn(2, 5, 7, 7)
    expected = layer(x)
    assert_close(layer(x.to(memory_format=torch.channels_last)), expected)
    wide = torch.randn(2, 5, 7, 14)[..., ::2]
    assert not wide.is_contiguous()
    assert_close(layer(wide), layer(wide.contiguous()))


@pytest.mark.parametrize("activation", [None, "lrelu"])
def test_equalized_linear_matches_formula(activation):
    layer = randomize(progan_fast.EqualizedLinear(13, 7, gain=0.5, activation=activation, negative_slope=0.3))
    x = torch.randn(5, 13, requires_grad=True)
    y = layer(x)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias))
    expected = x64 @ (w64 * 0.5 / math.sqrt(13)).T + b64
    if activation:
        expected = lrelu(expected, 0.3)
    assert_close(y, expected)
    y.backward(torch.ones_like(y))
    expected.backward(torch.ones_like(expected))
    assert_close(layer.weight.grad, w64.grad)
    assert_close(layer.bias.grad, b64.grad)
    assert_close(x.grad, x64.grad)


def test_equalized_linear_storage_and_last_dim():
    layer = randomize(progan_fast.EqualizedLinear(11, 3))
    assert layer.weight.shape == (3, 11) and layer.gain == pytest.approx(math.sqrt(2))
    x = torch.randn(2, 4, 11)
    assert_close(layer(x)[1, 2], layer(x[1, 2:3])[0])


@pytest.mark.parametrize("shape", [(3, 7, 5, 5), (1, 2, 3, 3), (4, 13), (2, 9, 1, 1)])
def test_pixel_norm_matches_formula(shape):
    assert_matches_formula(progan_fast.PixelNorm(), pixel_norm_formula, torch.randn(shape))


def test_pixel_norm_single_channel_gives_the_sign():
    x = torch.randn(2, 1, 4, 4)
    assert_close(PF.pixel_norm(x), torch.sign(x.double()))


def test_pixel_norm_eps_and_low_precision():
    x = torch.randn(2, 6, 3, 3) * 1e-3
    assert_close(PF.pixel_norm(x, eps=1e-4), pixel_norm_formula(x.double(), 1e-4))
    half = torch.randn(2, 7, 3, 3).to(torch.bfloat16)
    torch.testing.assert_close(PF.pixel_norm(half).float(), pixel_norm_formula(half.double()).float(),
                               rtol=1e-2, atol=1e-2)


def mbstd_formula(x, group_size, eps=1e-8):
    """docs/progan.md: sample i is in group i % M (M = N / G); biased variance over the group, sqrt(var + eps),
    averaged over C, H, W; appended as a constant feature map."""
    n = x.shape[0]
    g = min(group_size, n)
    m = n // g
    stats = []
    for i in range(n):
        members = x[[j for j in range(n) if j % m == i % m]]
        var = ((members - members.mean(dim=0)) ** 2).mean(dim=0)
        stats.append(torch.sqrt(var + eps).mean())
    feature = torch.stack(stats).reshape(n, 1, 1, 1).expand(n, 1, *x.shape[2:])
    return torch.cat([x, feature], dim=1)


@pytest.mark.parametrize("n,group_size", [(8, 4), (12, 4), (3, 4), (6, 2), (5, 1), (6, 3)])
def test_minibatch_stddev_matches_official_grouping(n, group_size):
    layer = progan_fast.MinibatchStdDev(group_size)
    assert layer(torch.randn(n, 5, 3, 3)).shape == (n, 6, 3, 3)
    assert_matches_formula(layer, lambda x: mbstd_formula(x, group_size), torch.randn(n, 5, 3, 3))


def test_minibatch_stddev_groups_are_strided_not_contiguous():
    # With N=8, G=4 there are M=2 groups: {0,2,4,6} and {1,3,5,7}. Make only the odd samples vary.
    x = torch.zeros(8, 2, 2, 2)
    x[1::2] = torch.randn(4, 2, 2, 2)
    x[0::2] = 1.0 + torch.randn(1, 2, 2, 2)  # equal even samples: variance 0
    stat = progan_fast.MinibatchStdDev(4)(x)[:, -1, 0, 0]
    assert torch.allclose(stat[0::2], torch.full((4,), 1e-4))
    assert torch.all(stat[1::2] > 0.1)


def test_minibatch_stddev_whole_batch_is_the_seed_variant():
    x = torch.randn(6, 4, 5, 5, requires_grad=True)
    y = progan_fast.MinibatchStdDev(group_size=None)(x)
    seed = torch.std(x.detach().double(), dim=0).mean()  # seeds: torch.std(x, dim=0).mean()
    assert torch.allclose(y[:, -1].double(), seed.expand(6, 5, 5), rtol=1e-5)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("n,group_size", [(6, 4), (10, 4), (7, 2)])
def test_minibatch_stddev_rejects_indivisible_batch(n, group_size):
    with pytest.raises(ValueError, match=f"batch size {n} is not divisible by the group size {group_size}"):
        progan_fast.MinibatchStdDev(group_size)(torch.randn(n, 3, 4, 4))


def test_minibatch_stddev_other_errors():
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        progan_fast.MinibatchStdDev(0)
    with pytest.raises(ValueError, match="at least 2"):
        progan_fast.MinibatchStdDev(None)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"4-D tensor \[N, C, H, W\]"):
        progan_fast.MinibatchStdDev()(torch.randn(4, 3, 4))


@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0, torch.tensor(0.61)])
def test_fade_blends_match_formulas(alpha):
    a = float(alpha)
    high, low = torch.randn(3, 5, 6, 6, requires_grad=True), torch.randn(3, 5, 3, 3, requires_grad=True)
    y = PF.fade_upsample(high, low, alpha)
    assert_close(y, a * high.double() + (1 - a) * nearest_up(low.double()))
    y.backward(torch.ones_like(y))
    assert_close(low.grad, torch.full_like(low, 4 * (1 - a)))
    assert_close(high.grad, torch.full_like(high, a))

    x = torch.randn(2, 3, 6, 10)
    assert_close(PF.fade_downsample(x, alpha), a * x.double() + (1 - a) * nearest_up(avgpool(x.double())))

    new, old = torch.randn(2, 7, 5, 5), torch.randn(2, 7, 5, 5)
    assert_close(PF.fade(new, old, alpha), a * new.double() + (1 - a) * old.double())


def test_fade_tensor_alpha_keeps_activation_dtype():
    high, low = torch.randn(2, 3, 4, 4).bfloat16(), torch.randn(2, 3, 2, 2).bfloat16()
    assert PF.fade_upsample(high, low, torch.tensor(0.5)).dtype == torch.bfloat16


def test_fade_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        PF.fade(torch.randn(2, 2), torch.randn(2, 2), 1.5)
    with pytest.raises(ValueError, match="0-dim tensor"):
        PF.fade(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="same shape"):
        PF.fade(torch.randn(2, 2), torch.randn(2, 3), 0.5)
    with pytest.raises(ValueError, match=r"low must have shape \(1, 3, 2, 2\)"):
        PF.fade_upsample(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 3, 3), 0.5)
    with pytest.raises(ValueError, match="even H and W"):
        PF.fade_downsample(torch.randn(1, 3, 5, 4), 0.5)


def test_bias_act_and_gradient_penalty_match_formulas():
    x, b = torch.randn(3, 5, 4, 2), torch.randn(5)
    assert_close(PF.bias_act(x, b, "lrelu", 0.1), lrelu(x.double() + b.double().reshape(1, -1, 1, 1), 0.1))
    assert_close(PF.bias_act(x, None), x)
    grad = torch.randn(6, 3, 5, 5)
    norms = grad.double().flatten(1).norm(dim=1)
    assert_close(PF.gradient_penalty(grad), 10 * ((norms - 1) ** 2).mean())
    assert_close(PF.gradient_penalty(grad, weight=2.0, target=0.5), 2 * ((norms - 0.5) ** 2).mean())


@pytest.mark.parametrize("call, message", [
    (lambda: progan_fast.EqualizedConv2d(3, 4, 2), "odd kernel size"),
    (lambda: progan_fast.EqualizedConv2d(3, 4, 3, activation="relu"), "'lrelu'"),
    (lambda: progan_fast.EqualizedLinear(3, 4, activation="tanh"), "'lrelu'"),
    (lambda: progan_fast.EqualizedConv2d(3, 4, 3)(torch.randn(1, 5, 4, 4)), "input has 5 channels but the weight expects 3"),
    (lambda: progan_fast.EqualizedConv2d(3, 4, 3)(torch.randn(3, 4, 4)), r"4-D tensor \[N, C, H, W\]"),
    (lambda: progan_fast.EqualizedConv2d(3, 4, 3)(torch.randint(0, 9, (1, 3, 4, 4))), "floating-point"),
    (lambda: progan_fast.EqualizedLinear(3, 4)(torch.randn(2, 5)), "last input dim must equal in_features"),
    (lambda: PF.pixel_norm(torch.randn(5)), "channels in dim 1"),
    (lambda: PF.bias_act(torch.randn(2, 3), torch.randn(4)), r"bias must have shape \[3\]"),
    (lambda: PF.gradient_penalty(torch.randn(5)), r"per-sample gradient \[N, ...\]"),
])
def test_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
