"""The cuda backend (CUDA C++ extension for the gradient-penalty double-backward path).

Without a GPU (CI): the extension compiles, links, caches and imports (skipped only without nvcc), and its
custom ops and autograd, run on the torch formulas of the kernels (tests/cuda_formulas.py), pass gradcheck /
gradgradcheck in float64 and match the torch backend through a discriminator's gradient penalty. On a GPU: every
kernel matches its formula in fp32 / fp16 / bf16 to second order, and a D step with gradient penalty matches the
torch backend.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import progan_fast
import progan_fast.functional as PF
from progan_fast import backend
from progan_fast.csrc import extension
from progan_fast.csrc.bias_act import bias_act_cuda
from progan_fast.csrc.extension import KERNEL_SOURCES, CudaExtensionError, build_or_load, find_nvcc, probe, source_dir
from progan_fast.csrc.gradient_penalty import gradient_penalty_cuda
from progan_fast.csrc.minibatch_stddev import minibatch_stddev_cuda
from progan_fast.ops.bias_act import bias_act_reference
from progan_fast.ops.equalized_conv import equalized_conv2d_op
from progan_fast.ops.gradient_penalty import gradient_penalty_reference
from progan_fast.ops.minibatch_stddev import minibatch_stddev_reference
from cuda_formulas import Formulas, stand_in


def nvcc_missing_reason():
    try:
        find_nvcc()
    except CudaExtensionError as error:
        return str(error)
    return None


needs_nvcc = pytest.mark.skipif(nvcc_missing_reason() is not None,
                                reason=f"the CUDA extension cannot be compiled here: {nvcc_missing_reason()}")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or nvcc_missing_reason() is not None,
                               reason="needs a CUDA GPU to run the kernels, and nvcc to build them")


# ---------------------------------------------------------------------------------------------------------
# Build, cache and load (CPU CI with nvcc)

BUILD = "from progan_fast import cuda_extension; cuda_extension()"


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """Two processes build into one empty cache at the same time: one builds, the other waits and loads."""
    if nvcc_missing_reason() is not None:
        pytest.skip(nvcc_missing_reason())
    cache = tmp_path_factory.mktemp("progan_fast_cache")
    env = dict(os.environ, PROGAN_FAST_CACHE=str(cache))
    processes = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    runs = [(process.communicate(timeout=900), process.returncode) for process in processes]
    return cache, [(code, out + err) for (out, err), code in runs]


@needs_nvcc
def test_concurrent_builds_both_succeed_and_build_once(fresh_cache):
    _, runs = fresh_cache
    for code, output in runs:
        assert code == 0, output
    statuses = sorted("built in" in output for _, output in runs)
    assert statuses == [False, True], [output for _, output in runs]
    assert any("loaded from cache" in output for _, output in runs)
    print([line for _, output in runs for line in output.splitlines() if "CUDA extension" in line])


@pytest.fixture(scope="module")
def cached_extension(fresh_cache):
    cache, _ = fresh_cache
    library = next((cache / "cuda_extension").glob("*/progan_fast_cuda_*.so"))
    modified = library.stat().st_mtime_ns
    module = build_or_load(cache)
    return module, library, modified


@needs_nvcc
def test_loading_again_uses_the_cache(cached_extension, capfd):
    module, library, modified = cached_extension
    assert module.built_now is False
    assert library.stat().st_mtime_ns == modified
    assert str(library.parent) == module.build_dir
    assert sorted(name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))) == [
        "bias_act_forward", "gradient_penalty_backward", "gradient_penalty_forward", "lrelu_masked_grad",
        "minibatch_stddev_backward", "minibatch_stddev_double_backward", "minibatch_stddev_stats"]


@needs_nvcc
def test_extension_rejects_cpu_tensors(cached_extension):
    module = cached_extension[0]
    with pytest.raises(RuntimeError, match="must be a CUDA tensor.*move the tensors to a GPU"):
        module.bias_act_forward(torch.randn(2, 3, 4, 4), None, 0.2, 1, 0)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        module.gradient_penalty_forward(torch.randn(2, 3), 10.0, 1.0, 0)


def test_missing_nvcc_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(CudaExtensionError, match="nvcc .* was not found: install the CUDA toolkit"):
        build_or_load(tmp_path)


@needs_nvcc
def test_compiler_errors_are_reported_and_leave_no_build(monkeypatch, tmp_path):
    broken = tmp_path / "csrc"
    shutil.copytree(source_dir(), broken)
    for name in KERNEL_SOURCES:
        (broken / name).write_text("this is not CUDA\n")
    monkeypatch.setattr(extension, "source_dir", lambda: broken)
    with pytest.raises(CudaExtensionError, match="(?s)nvcc on bias_act.cu failed.*this is not CUDA"):
        build_or_load(tmp_path / "cache")
    assert not [path for path in (tmp_path / "cache" / "cuda_extension").iterdir() if path.is_dir()]


@needs_nvcc
def test_unwritable_cache_is_explained(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(CudaExtensionError, match="cannot write the build cache .* set PROGAN_FAST_CACHE"):
        build_or_load(not_a_folder)


@pytest.mark.parametrize("call", [
    lambda: PF.bias_act(torch.randn(2, 3, 4, 4), torch.randn(3), "lrelu"),
    lambda: PF.minibatch_stddev(torch.randn(4, 3, 4, 4)),
    lambda: PF.gradient_penalty(torch.randn(4, 3, 4, 4)),
])
def test_cuda_backend_rejects_cpu_tensors(call):
    with progan_fast.use_backend("cuda"), pytest.raises(progan_fast.BackendUnavailableError, match="CUDA tensors"):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_probe_says_why_the_backend_cannot_run():
    assert "torch.cuda.is_available() is False" in probe()
    assert backend._CUDA_EXTENSION_PROBE is probe


# ---------------------------------------------------------------------------------------------------------
# The custom ops and their autograd on the kernels' torch formulas, float64 (CPU)

@pytest.fixture
def formulas():
    with stand_in(Formulas):
        yield Formulas


def double(*shape, channels_last=False):
    x = torch.randn(*shape, dtype=torch.float64)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()


@pytest.mark.parametrize("shape, dim, channels_last", [((3, 5, 4, 3), 1, False), ((3, 5, 4, 3), 1, True),
                                                       ((6, 7), -1, False), ((5,), 0, False)])
@pytest.mark.parametrize("activation", ["lrelu", None])
def test_bias_act_ops_match_reference_and_pass_gradgradcheck(formulas, shape, dim, channels_last, activation):
    x, bias = double(*shape, channels_last=channels_last), double(shape[dim])

    def op(x, bias):
        return bias_act_cuda(x, bias, activation, 0.2, dim)

    torch.testing.assert_close(op(x, bias), bias_act_reference(x, bias, activation, 0.2, dim), rtol=0, atol=0)
    assert torch.autograd.gradcheck(op, (x, bias))
    assert torch.autograd.gradgradcheck(op, (x, bias))


def test_lrelu_gradient_is_differentiable_to_third_order(formulas):
    x, bias, out_grad = double(2, 3, 4, 5), double(3), double(2, 3, 4, 5)

    def first_order(x, bias, out_grad):
        y = bias_act_cuda(x, bias, "lrelu", 0.2)
        return torch.autograd.grad(y, (x, bias), out_grad, create_graph=True)

    assert torch.autograd.gradgradcheck(first_order, (x, bias, out_grad))


@pytest.mark.parametrize("shape, group_size, channels_last", [((4, 3, 5, 3), 2, False), ((8, 2, 3, 3), 4, True),
                                                              ((6, 3, 2, 5), 6, False)])
def test_minibatch_stddev_ops_match_reference_and_pass_gradgradcheck(formulas, shape, group_size, channels_last):
    x = double(*shape, channels_last=channels_last)

    def op(x):
        return minibatch_stddev_cuda(x, group_size, 1e-8)

    torch.testing.assert_close(op(x), minibatch_stddev_reference(x, group_size), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (3, 7)])
def test_gradient_penalty_op_matches_reference_and_passes_gradcheck(formulas, shape):
    grad = double(*shape)

    def op(grad):
        return gradient_penalty_cuda(grad, 10.0, 1.0)

    torch.testing.assert_close(op(grad), gradient_penalty_reference(grad), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(op, (grad,))


CUSTOM_OP_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_cuda_custom_ops_pass_opcheck(formulas):
    """Schema, fake implementation (shapes, strides, dtypes against the formulas) and autograd registration."""
    x, bias, y = torch.randn(3, 5, 4, 3), torch.randn(5), torch.randn(3, 5, 4, 3)
    ops = torch.ops.progan_fast
    for args in ((x, bias, True, 0.2, 1), (x.contiguous(memory_format=torch.channels_last), None, False, 0.2, 1)):
        torch.library.opcheck(ops.cuda_bias_act, args, test_utils=CUSTOM_OP_CHECKS)
    torch.library.opcheck(ops.cuda_lrelu_grad, (x, y, 0.2, 1, True), test_utils=CUSTOM_OP_CHECKS)
    torch.library.opcheck(ops.cuda_lrelu_masked_grad, (x, bias, y, 0.2, 1), test_utils=CUSTOM_OP_CHECKS)
    images = torch.randn(8, 3, 4, 4)
    torch.library.opcheck(ops.cuda_minibatch_stddev, (images, 4, 1e-8), test_utils=CUSTOM_OP_CHECKS)
    torch.library.opcheck(ops.cuda_minibatch_stddev_backward, (torch.randn(8, 4, 4, 4), images, 4, 1e-8),
                          test_utils=CUSTOM_OP_CHECKS)
    torch.library.opcheck(ops.cuda_gradient_penalty, (images, 10.0, 1.0), test_utils=CUSTOM_OP_CHECKS)


def test_third_order_through_the_penalty_kernels_is_refused(formulas):
    """The minibatch-stddev double backward and the penalty backward are once-differentiable: a backward through
    them raises (torch's once_differentiable; torch.autograd.grad prunes that branch instead)."""
    x = double(4, 3, 2, 2)
    y = minibatch_stddev_cuda(x, 2, 1e-8)
    grad_x, = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    second, = torch.autograd.grad(grad_x.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        second.sum().backward()
    grad = double(4, 3)
    penalty_grad, = torch.autograd.grad(gradient_penalty_cuda(grad), grad, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):  # the saved gradient is not tracked
        penalty_grad.sum().backward()


def test_discriminator_compiles_on_the_cuda_ops(monkeypatch, formulas):
    """The cuda ops are opaque custom ops: torch.compile traces D through their fake implementations."""
    monkeypatch.setattr(backend, "unavailable_reason", lambda name, device: None)
    torch._dynamo.reset()
    model = tiny_discriminator()
    images = torch.randn(8, 3, 8, 8)
    with progan_fast.use_backend("cuda"):
        expected = model(images)
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(images)
    torch.testing.assert_close(got, expected)


class CountingFormulas:
    """The formulas, counting the kernel calls, so a test can see the cuda ops ran."""

    dtypes = Formulas.dtypes

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return getattr(Formulas, name)(*args)
        return call


def penalty_step_gradients(model, real, fake, u):
    """Parameter gradients of the WGAN-GP D loss (with the drift term)."""
    x_hat = torch.lerp(real, fake, u).requires_grad_()
    grad, = torch.autograd.grad(model(x_hat).sum(), x_hat, create_graph=True)
    real_scores = model(real)
    loss = model(fake).mean() - real_scores.mean() + PF.gradient_penalty(grad) + 1e-3 * real_scores.square().mean()
    used = [p for name, p in model.named_parameters() if not name.startswith("from_rgb.0.")]  # 4x4 input only
    return torch.autograd.grad(loss, used)


def tiny_discriminator(device="cpu"):
    torch.manual_seed(3)
    model = progan_fast.Discriminator(resolution=8, fmap_base=32, fmap_max=8).to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.3)
    return model


def test_discriminator_penalty_through_the_cuda_ops_matches_torch(monkeypatch):
    """The whole double-backward wiring of the cuda backend, with the formulas standing in for the kernels."""
    model = tiny_discriminator()
    real, fake = torch.randn(2, 8, 3, 8, 8)
    u = torch.rand(8, 1, 1, 1)
    expected = penalty_step_gradients(model, real, fake, u)
    monkeypatch.setattr(backend, "unavailable_reason", lambda name, device: None)
    with stand_in(CountingFormulas()) as kernels, progan_fast.use_backend("cuda"):
        got = penalty_step_gradients(model, real, fake, u)
    expected_calls = {"minibatch_stddev_double_backward", "gradient_penalty_backward"}
    if "cuda" in equalized_conv2d_op.impls:  # D's convolutions end in the cuda bias_act
        expected_calls |= {"bias_act_forward", "lrelu_masked_grad"}
    assert expected_calls <= set(kernels.calls)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The kernels on a GPU

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
DTYPES = list(TOLERANCE)


def pattern_like(t):
    """A fixed, sign-changing weighting of t's elements (no random state)."""
    return torch.linspace(-3, 5, t.numel(), device=t.device, dtype=torch.float32).cos().reshape(t.shape)


def derivatives(fn, tensors):
    """fn(*inputs), its gradients for the output gradient (the last tensor), and the gradients of a fixed
    weighting of those gradients with respect to every tensor (second order), as float32."""
    tensors = [t.detach().requires_grad_() for t in tensors]
    *inputs, out_grad = tensors
    y = fn(*inputs)
    grads = torch.autograd.grad(y, inputs, out_grad, create_graph=True)
    weighted = sum((g.float() * pattern_like(g)).sum() for g in grads)
    second = torch.autograd.grad(weighted, tensors, allow_unused=True)
    return [t.float() for t in (y, *grads, *second) if t is not None]


def assert_kernels_match_formulas(fn, tensors, dtype):
    stored = [t.to(dtype) for t in tensors]
    got = derivatives(fn, stored)
    with stand_in(Formulas):
        expected = derivatives(fn, [t.double() for t in stored])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        error = ((g - e).abs().max() / e.abs().max().clamp_min(1e-6)).item()
        assert error <= TOLERANCE[dtype], error


def cuda_randn(*shape, channels_last=False):
    x = torch.randn(*shape, device="cuda")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", ["lrelu", None])
def test_bias_act_kernels(dtype, channels_last, activation):
    x, bias = cuda_randn(4, 19, 7, 5, channels_last=channels_last), cuda_randn(19)
    out_grad = cuda_randn(4, 19, 7, 5, channels_last=not channels_last)  # the other layout: exercises the copy

    def op(x, bias):
        return bias_act_cuda(x, bias, activation, 0.2, 1)

    assert_kernels_match_formulas(op, [x, bias, out_grad], dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_kernels_on_dense_layer_output(dtype):
    def op(x, bias):
        return bias_act_cuda(x, bias, "lrelu", 0.2, -1)

    assert_kernels_match_formulas(op, [cuda_randn(9, 33), cuda_randn(33), cuda_randn(9, 33)], dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch, group_size", [(8, 4), (6, 2), (5, 5)])
def test_minibatch_stddev_kernels(dtype, channels_last, batch, group_size):
    x = cuda_randn(batch, 13, 4, 3, channels_last=channels_last)

    def op(x):
        return minibatch_stddev_cuda(x, group_size, 1e-8)

    assert_kernels_match_formulas(op, [x, cuda_randn(batch, 14, 4, 3)], dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3, 33, 17), (3, 70000), (1, 5)])
def test_gradient_penalty_kernels(dtype, shape):
    grad = cuda_randn(*shape) / shape[1] ** 0.5
    stored = grad.to(dtype).requires_grad_()
    got = gradient_penalty_cuda(stored)
    expected_input = stored.detach().double().requires_grad_()
    got_grad, = torch.autograd.grad(got * 0.7, stored)
    with stand_in(Formulas):
        expected = gradient_penalty_cuda(expected_input)
        expected_grad, = torch.autograd.grad(expected * 0.7, expected_input)
    assert abs(got.item() - expected.item()) <= TOLERANCE[dtype] * abs(expected.item())
    error = ((got_grad.double() - expected_grad).abs().max() / expected_grad.abs().max()).item()
    assert error <= TOLERANCE[dtype], error


@needs_gpu
def test_discriminator_step_with_penalty_matches_torch_backend(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny_discriminator("cuda")
    real, fake = torch.randn(2, 8, 3, 8, 8, device="cuda")
    u = torch.rand(8, 1, 1, 1, device="cuda")
    with progan_fast.use_backend("torch"):
        expected = penalty_step_gradients(model, real, fake, u)
    with progan_fast.use_backend("cuda"):
        got = penalty_step_gradients(model, real, fake, u)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
