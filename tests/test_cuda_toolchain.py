"""The CUDA extension's toolchain through the backend switch: a missing nvcc or C++ compiler gives one warning
and the torch path under `auto`, an error naming the tool under an explicit `cuda`. tests/test_cuda_extension.py
covers build_or_load's own errors."""
import warnings

import pytest
import torch

import progan_fast
from progan_fast import backend
from progan_fast.csrc import extension as extension_module
# torch.cuda.is_available is faked so that the probe gets that far; gradient_penalty has only a cuda implementation,
# so `auto` has nothing else to try.


def no_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)


def no_compiler(monkeypatch, tmp_path):
    try:
        extension_module.find_nvcc()
    except extension_module.CudaExtensionError as error:
        pytest.skip(f"needs nvcc to reach the C++ compiler check: {error}")
    monkeypatch.setenv("CXX", "no-such-c++-compiler")


TOOLCHAIN_GAPS = [
    ("nvcc missing", no_nvcc, "nvcc (the CUDA compiler) was not found: install the CUDA toolkit 12 or newer"),
    ("C++ compiler missing", no_compiler, "no C++ compiler ('no-such-c++-compiler') was found: install one (e.g. "
                                          "`apt install g++`) or point the CXX environment variable at it"),
]


@pytest.fixture
def fresh_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extension_module, "_extension", None)
    monkeypatch.setenv(extension_module.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "_warned_fallback", False)
    extension_module.probe.cache_clear()
    yield
    extension_module.probe.cache_clear()


@pytest.mark.parametrize("break_toolchain, fragment", [row[1:] for row in TOOLCHAIN_GAPS],
                         ids=[row[0] for row in TOOLCHAIN_GAPS])
def test_missing_toolchain_falls_back_under_auto_and_is_an_error_under_cuda(monkeypatch, tmp_path, fresh_probe,
                                                                             break_toolchain, fragment):
    break_toolchain(monkeypatch, tmp_path)
    op = backend.OPS["gradient_penalty"]
    with pytest.warns(RuntimeWarning, match="falling back to the torch backend") as caught:
        assert op.select(torch.device("cuda")) is op.impls["torch"]
    assert len(caught) == 1 and fragment in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not one per call
        assert op.select(torch.device("cuda")) is op.impls["torch"]
    with progan_fast.use_backend("cuda"), pytest.raises(progan_fast.BackendUnavailableError) as error:
        op.select(torch.device("cuda"))
    assert "backend 'cuda' cannot run op gradient_penalty" in str(error.value) and fragment in str(error.value)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built was left
