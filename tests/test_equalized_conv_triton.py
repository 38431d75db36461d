"""equalized_conv2d on the triton backend vs the torch reference: forward, gradients, double backward,
torch.compile and errors. Runs in the Triton interpreter on CPU (small shapes) and on CUDA when present.

Tolerances, as max |kernel - reference| / max |reference| per tensor: fp32 1e-5, fp16/bf16 1e-2. Low-precision
runs are compared with the fp32 reference evaluated on the same (rounded) inputs and the kernel's LeakyReLU mask.
"""
import pytest
import torch

import progan_fast
from progan_fast.kernels.equalized_conv import equalized_conv2d_triton
from progan_fast.ops.equalized_conv import equalized_conv2d, equalized_conv2d_reference
from progan_fast.ops.pixel_norm import pixel_norm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes bf16 tl.dot wrongly (numpy has no bf16), so bf16 is only checked on a GPU.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LARGEST_ERROR = {}  # dtype -> largest relative error seen, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _report_largest_errors():
    yield
    for dtype, error in LARGEST_ERROR.items():
        print(f"\nequalized_conv2d triton: largest relative error {dtype}: {error:.2e}")


@pytest.fixture(autouse=True)
def _exact_fp32_convolutions(monkeypatch):
    """fp32 kernels follow cudnn.allow_tf32 (like torch's convs); compare exact fp32 with exact fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def assert_close(actual, expected, dtype, what):
    error = ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    LARGEST_ERROR[dtype] = max(LARGEST_ERROR.get(dtype, 0.0), error)
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e} ({dtype})"


def make_input(n, c, size, dtype, layout):
    if layout == "strided":  # every other column of a wider tensor
        return torch.randn(n, c, size, 2 * size, device=DEVICE).to(dtype)[..., ::2].requires_grad_()
    if layout == "padded_channels_last":  # the first c channels of a channels_last buffer 16-aligned per pixel
        wider = torch.randn(n, -(-c // 16) * 16, size, size, device=DEVICE).to(dtype)
        return wider.to(memory_format=torch.channels_last)[:, :c].requires_grad_()
    x = torch.randn(n, c, size, size, device=DEVICE).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def run_both(x, weight, bias, output_grad=None, padding=None, activation=None, pixel_norm=False, upsample=False):
    """(output, [grad x, grad weight, grad bias]) of the triton op and of the fp32 reference."""
    with progan_fast.use_backend("triton"):
        y = equalized_conv2d(x, weight, bias, padding=padding, activation=activation, pixel_norm=pixel_norm,
                             upsample=upsample)
    if output_grad is None:
        output_grad = torch.randn_like(y)
    inputs = [t for t in (x, weight, bias) if t is not None]
    grads = torch.autograd.grad(y, inputs, output_grad)
    fp32 = [t.detach().float().requires_grad_() for t in inputs]
    fp32_bias = fp32[2] if bias is not None else None
    padding = weight.shape[2] // 2 if padding is None else padding
    if x.dtype == torch.float32:
        y_ref = equalized_conv2d_reference(fp32[0], fp32[1], fp32_bias, 2 ** 0.5, padding, activation, 0.2,
                                           pixel_norm, upsample, 1e-8)
    else:
        # In fp16/bf16 a pre-activation within rounding distance of 0 may fall on the other side of the LeakyReLU
        # kink than in fp32, which flips its gradient: take the mask from the kernel's own output instead
        # (y > 0 exactly where its pre-activation is), the rest of the reference stays fp32.
        y_ref = equalized_conv2d_reference(fp32[0], fp32[1], fp32_bias, 2 ** 0.5, padding, None, 0.2, False,
                                           upsample, 1e-8)
        if activation == "lrelu":
            y_ref = y_ref * torch.where(y.detach() > 0, 1.0, 0.2)
        if pixel_norm:
            y_ref = pixel_norm_reference(y_ref)
    ref_grads = torch.autograd.grad(y_ref, fp32, output_grad.float())
    return (y, grads), (y_ref, ref_grads)


def make_params(c_in, c_out, k, dtype, has_bias=True):
    weight = torch.randn(c_out, c_in, k, k, device=DEVICE).to(dtype).requires_grad_()
    bias = torch.randn(c_out, device=DEVICE).to(dtype).requires_grad_() if has_bias else None
    return weight, bias


def check_matches_reference(x, weight, bias, dtype, output_grad=None, **options):
    """Output and every gradient within the dtype's tolerance; returns the triton output and gradients."""
    (y, grads), (y_ref, ref_grads) = run_both(x, weight, bias, output_grad, **options)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, "output")
    for name, grad, ref_grad in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close(grad, ref_grad, dtype, f"grad {name}")
    return y, grads


# (batch, in, out, size, k, upsample, pixel_norm, activation, bias, layout): odd channel counts and sizes,
# every option on and off at least once.
CASES = [
    (3, 5, 7, 5, 3, False, False, "lrelu", True, "contiguous"),
    (1, 13, 3, 3, 3, True, True, "lrelu", True, "contiguous"),
    (3, 3, 13, 8, 1, False, False, "lrelu", True, "channels_last"),
    (2, 7, 5, 1, 3, True, False, None, True, "strided"),
    (1, 5, 7, 3, 3, True, True, "lrelu", False, "channels_last"),
    (3, 7, 3, 5, 1, False, True, None, True, "strided"),
    (1, 13, 5, 8, 3, False, True, "lrelu", True, "contiguous"),
    (2, 3, 5, 3, 1, True, False, "lrelu", False, "contiguous"),
    # several channel blocks: 2 K steps; 2 output-channel tiles; a 64-wide PixelNorm tile
    (1, 37, 150, 3, 3, False, False, "lrelu", True, "contiguous"),
    (2, 37, 40, 3, 3, True, True, "lrelu", True, "channels_last"),
    # D's 4x4 conv: 16 * k + 1 channels after minibatch stddev, pixels 16-aligned; whole channel blocks + a tail
    (4, 65, 24, 4, 3, False, False, "lrelu", True, "padded_channels_last"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}-c{}to{}-s{}-k{}-up{:d}-pn{:d}-{}-b{:d}-{}".format(*c))
def test_forward_and_gradients_match_reference(case, dtype):
    n, c_in, c_out, size, k, upsample, pixel_norm, activation, has_bias, layout = case
    x = make_input(n, c_in, size, dtype, layout)
    weight, bias = make_params(c_in, c_out, k, dtype, has_bias)
    y, grads = check_matches_reference(x, weight, bias, dtype, activation=activation, pixel_norm=pixel_norm,
                                       upsample=upsample)
    assert y.dtype == dtype and all(grad.dtype == dtype for grad in grads)
    assert y.is_contiguous(memory_format=torch.channels_last) == layout.endswith("channels_last")


@pytest.mark.parametrize("k, padding, upsample", [(3, 0, False), (5, 1, False), (1, 1, False), (5, 2, True),
                                                   (3, 0, True)])  # the last: the documented fallback
def test_other_kernel_sizes_and_paddings(k, padding, upsample):
    check_matches_reference(make_input(2, 5, 6, torch.float32, "contiguous"), *make_params(5, 7, k, torch.float32),
                            torch.float32, padding=padding, activation="lrelu", upsample=upsample)


def test_broadcast_output_gradient():
    """y.sum() hands the backward an expanded (stride 0) gradient; the epilogue kernel reads it through strides."""
    output_grad = torch.ones(1, device=DEVICE).expand(2, 7, 3, 3)
    check_matches_reference(make_input(2, 5, 3, torch.float32, "contiguous"), *make_params(5, 7, 3, torch.float32),
                            torch.float32, output_grad, activation="lrelu", pixel_norm=True)


def test_mixed_precision_weight():
    """fp16 activations with fp32 master weights: the weight is cast to fp16 for the product."""
    _, grads = check_matches_reference(make_input(2, 5, 4, torch.float16, "contiguous"),
                                       *make_params(5, 7, 3, torch.float32), torch.float16, activation="lrelu",
                                       pixel_norm=True)
    assert [grad.dtype for grad in grads] == [torch.float16, torch.float32, torch.float32]


def test_autocast_computes_in_autocast_dtype():
    x = make_input(2, 5, 4, torch.float32, "contiguous")
    weight, bias = make_params(5, 7, 3, torch.float32)
    with torch.autocast(DEVICE, dtype=torch.float16), progan_fast.use_backend("triton"):
        y = equalized_conv2d(x, weight, bias, activation="lrelu")
    assert y.dtype == torch.float16
    grads = torch.autograd.grad(y.float().square().sum(), (x, weight, bias))
    assert [grad.dtype for grad in grads] == [torch.float32] * 3
    reference = equalized_conv2d_reference(x.half().float(), weight.half().float(), bias, 2 ** 0.5, 1, "lrelu", 0.2,
                                           False, False, 1e-8)
    assert_close(y, reference, torch.float16, "autocast output")


def input_gradient_penalty(backend, x, weight, bias, upsample):
    """The WGAN-GP pattern: differentiate a function of the input gradient."""
    with progan_fast.use_backend(backend):
        y = equalized_conv2d(x, weight, bias, activation="lrelu", upsample=upsample)
    (grad_x,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    return torch.autograd.grad(grad_x.square().sum(), (x, weight, bias))


@pytest.mark.parametrize("k, upsample", [(1, False), (3, False), (3, True)])
def test_double_backward_matches_torch(k, upsample):
    x = make_input(3, 5, 5, torch.float32, "contiguous")
    weight, bias = make_params(5, 7, k, torch.float32)
    expected = input_gradient_penalty("torch", x, weight, bias, upsample)
    for grad, ref_grad in zip(input_gradient_penalty("triton", x, weight, bias, upsample), expected):
        assert_close(grad, ref_grad, torch.float32, "double backward")


def test_double_backward_through_pixel_norm_is_refused():
    x = make_input(1, 3, 3, torch.float32, "contiguous")
    weight, bias = make_params(3, 5, 3, torch.float32)
    with progan_fast.use_backend("triton"):
        y = equalized_conv2d(x, weight, bias, activation="lrelu", pixel_norm=True)
    (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once-differentiable"):
        torch.autograd.grad(grad_x.sum(), weight)


def test_float64_falls_back_to_reference():
    x = torch.randn(2, 3, 4, 4, device=DEVICE, dtype=torch.float64)
    weight = torch.randn(5, 3, 3, 3, device=DEVICE, dtype=torch.float64)
    with progan_fast.use_backend("triton"):
        y = equalized_conv2d(x, weight, activation="lrelu", pixel_norm=True)
    torch.testing.assert_close(y, equalized_conv2d_reference(x, weight, None, 2 ** 0.5, 1, "lrelu", 0.2, True,
                                                             False, 1e-8))


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation, autograd registration and strides of the registered ops."""
    x = make_input(2, 5, 4, torch.float32, "contiguous")
    weight, bias = make_params(5, 7, 3, torch.float32)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for pixel_norm, upsample in ((True, True), (False, False)):
        torch.library.opcheck(torch.ops.progan_fast.equalized_conv2d,
                              (x, weight, bias, 0.2, 1, True, 0.2, pixel_norm, upsample, 1e-8), test_utils=checks)
    y = torch.randn(2, 7, 4, 4, device=DEVICE)
    dy = torch.randn(2, 7, 4, 4, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.progan_fast.equalized_conv2d_epilogue_backward,
                          (dy, y, y.new_empty(0), True, 0.2, False), test_utils=checks)


class TinyGeneratorBlock(torch.nn.Module):
    """Upsample conv with PixelNorm, then a D-style 1x1 conv, calling the triton implementation directly."""

    def __init__(self):
        super().__init__()
        self.weight0 = torch.nn.Parameter(torch.randn(5, 3, 3, 3, device=DEVICE))
        self.bias0 = torch.nn.Parameter(torch.randn(5, device=DEVICE))
        self.weight1 = torch.nn.Parameter(torch.randn(3, 5, 1, 1, device=DEVICE))
        self.bias1 = torch.nn.Parameter(torch.randn(3, device=DEVICE))

    def forward(self, x, conv):
        x = conv(x, self.weight0, self.bias0, 2 ** 0.5, 1, "lrelu", 0.2, True, True, 1e-8)
        return conv(x, self.weight1, self.bias1, 2 ** 0.5, 0, "lrelu", 0.2, False, False, 1e-8)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_forward_and_backward(compiler):
    """torch.compile traces the opaque custom ops in one graph, forward and first-order backward."""
    torch._dynamo.reset()
    model = TinyGeneratorBlock()
    x = torch.randn(2, 3, 3, 3, device=DEVICE)
    expected = model(x, equalized_conv2d_reference)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    y = torch.compile(model, backend=compiler, fullgraph=True)(x, equalized_conv2d_triton)
    grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
    assert_close(y, expected, torch.float32, "compiled output")
    for grad, ref_grad in zip(grads, expected_grads):
        assert_close(grad, ref_grad, torch.float32, "compiled grad")


def test_compiled_layer_through_backend_dispatch():
    """Through the public layer and the backend switch (dynamo may split the graph at the dispatch)."""
    torch._dynamo.reset()
    layer = progan_fast.EqualizedConv2d(3, 5, 3, activation="lrelu").to(DEVICE)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    expected = layer(x)
    with progan_fast.use_backend("triton"):
        y = torch.compile(layer, backend="aot_eager")(x)
    assert_close(y, expected, torch.float32, "compiled layer output")


@pytest.mark.parametrize("make_args, error, message", [
    (lambda: (torch.ones(1, 3, 4, 4, dtype=torch.int32), torch.randn(5, 3, 3, 3)), TypeError, "floating-point"),
    (lambda: (torch.randn(3, 4, 4), torch.randn(5, 3, 3, 3)), ValueError, "4-D"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(5, 3, 3, 1)), ValueError, "square kernel"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(5, 4, 3, 3)), ValueError, "channels"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(5, 3, 3, 3, device="meta")), ValueError, "same device"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.ones(5, 3, 3, 3, dtype=torch.int64)), TypeError, "weight"),
    (lambda: (torch.randn(1, 3, 2, 2), torch.randn(5, 3, 5, 5), None, 2 ** 0.5, 0), ValueError, "does not fit"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(5, 3, 3, 3), None, 2 ** 0.5, -1), ValueError, "padding"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(5, 3, 3, 3), None, 2 ** 0.5, 1, "lrelu", -0.1), ValueError,
     "negative_slope"),
])
def test_bad_input_raises_clear_error(make_args, error, message):
    args = [a.to(DEVICE) if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in make_args()]
    with progan_fast.use_backend("triton"), pytest.raises(error, match=message):
        equalized_conv2d(*args)
