"""progan_fast: fused, backend-switchable ProGAN layers and models for PyTorch."""
import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _map_source_kernels() -> None:
    # setup.py installs ../kernels as progan_fast.kernels; in a plain source checkout map it by hand.
    if _importlib_util.find_spec(__name__ + ".kernels") is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    init = _os.path.join(folder, "__init__.py")
    if _os.path.isfile(init):
        spec = _importlib_util.spec_from_file_location(__name__ + ".kernels", init,
                                                       submodule_search_locations=[folder])
        module = _importlib_util.module_from_spec(spec)
        _sys.modules[spec.name] = module
        spec.loader.exec_module(module)


_map_source_kernels()

from . import functional, reference  # noqa: E402
from .cuda_extension import CudaExtensionError, cuda_extension  # noqa: E402
from .backend import BackendUnavailableError, get_backend, set_backend, use_backend  # noqa: E402
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm  # noqa: E402
from .models import Discriminator, Generator  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EqualizedConv2d", "EqualizedLinear", "PixelNorm", "MinibatchStdDev", "Generator", "Discriminator",
           "functional", "reference", "set_backend", "get_backend", "use_backend", "BackendUnavailableError",
           "cuda_extension", "CudaExtensionError"]
