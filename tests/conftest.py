import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from progan_fast import backend  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    """Each test starts on the default backend with a fixed seed."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_selected", None)
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases (run with -m slow)")
