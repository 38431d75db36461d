"""The backend switch: set_backend, use_backend, PROGAN_FAST_BACKEND, availability errors, auto fallback."""
import warnings

import pytest
import torch

import progan_fast
from progan_fast import backend
from progan_fast.backend import BackendUnavailableError, Op


@pytest.fixture(autouse=True)
def _scratch_registry(monkeypatch):
    """Ops made by these tests do not join the package's registry."""
    monkeypatch.setattr(backend, "OPS", dict(backend.OPS))


def _fake_op():
    """An op whose implementations say who ran."""
    op = Op("probe", lambda x: "torch")
    op.register("triton", lambda x: "triton")
    return op


def test_default_is_auto_and_set_backend_switches():
    assert progan_fast.get_backend() == "auto"
    progan_fast.set_backend("torch")
    assert progan_fast.get_backend() == "torch"
    progan_fast.set_backend("TRITON")
    assert progan_fast.get_backend() == "triton"


def test_use_backend_restores_previous_choice_even_on_error():
    progan_fast.set_backend("torch")
    with pytest.raises(RuntimeError):
        with progan_fast.use_backend("cuda"):
            assert progan_fast.get_backend() == "cuda"
            with progan_fast.use_backend("triton"):
                assert progan_fast.get_backend() == "triton"
            assert progan_fast.get_backend() == "cuda"
            raise RuntimeError("leave the block")
    assert progan_fast.get_backend() == "torch"


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert progan_fast.get_backend() == "torch"
    progan_fast.set_backend("triton")  # code wins over the environment
    assert progan_fast.get_backend() == "triton"


def test_unknown_names_are_rejected_with_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="auto, torch, triton, cuda"):
        progan_fast.set_backend("tpu")
    with pytest.raises(ValueError, match="use_backend"):
        with progan_fast.use_backend("fast"):
            pass
    monkeypatch.setenv(backend.ENV_VAR, "cudnn")
    with pytest.raises(ValueError, match=backend.ENV_VAR):
        progan_fast.get_backend()


def test_explicit_triton_on_cpu_without_interpreter_raises_with_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 3, 4, 4)
    with progan_fast.use_backend("triton"):
        with pytest.raises(BackendUnavailableError, match="CUDA tensors.*TRITON_INTERPRET=1"):
            progan_fast.functional.pixel_norm(x)


def test_explicit_cuda_on_cpu_tensor_raises_with_reason():
    x = torch.randn(2, 3, 4, 4)
    with progan_fast.use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda.*move the tensors to a GPU"):
            progan_fast.PixelNorm()(x)


def test_missing_triton_package_is_named(monkeypatch):
    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: None)
    assert "pip install triton" in backend.unavailable_reason("triton", torch.device("cuda"))


def test_torch_backend_runs_the_reference_everywhere():
    op = _fake_op()
    with progan_fast.use_backend("torch"):
        assert op(torch.ones(1)) == "torch"


def test_explicit_backend_without_an_op_implementation_uses_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    op = Op("reference_only", lambda x: "torch")
    with progan_fast.use_backend("triton"):
        assert op(torch.ones(1)) == "torch"
        assert _fake_op()(torch.ones(1)) == "triton"


def test_auto_uses_the_reference_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _fake_op()(torch.ones(1)) == "torch"


def test_auto_picks_the_accelerated_backend_when_it_can_run(monkeypatch):
    monkeypatch.setattr(backend, "unavailable_reason", lambda name, device: None)
    assert _fake_op().select(torch.device("cuda"))(None) == "triton"


def test_auto_falls_back_to_torch_with_a_single_warning(monkeypatch):
    monkeypatch.setattr(backend, "unavailable_reason", lambda name, device: "no GPU driver")
    monkeypatch.setattr(backend, "_warned_fallback", False)
    op = _fake_op()
    with pytest.warns(RuntimeWarning, match="falling back to the torch backend.*no GPU driver"):
        assert op.select(torch.device("cuda"))(None) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op.select(torch.device("cuda"))(None) == "torch"


def test_registry_lists_every_functional_op_once():
    assert {"bias_act", "pixel_norm", "minibatch_stddev", "fade", "fade_upsample", "fade_downsample",
            "equalized_conv2d", "equalized_linear", "gradient_penalty"} <= set(backend.OPS)
    with pytest.raises(ValueError, match="exists already"):
        Op("pixel_norm", lambda x: x)


def test_register_rejects_unknown_backends():
    with pytest.raises(ValueError, match="accelerated backend"):
        Op("x", lambda x: x).register("torch", lambda x: x)
