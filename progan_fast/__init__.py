"""progan_fast: fused, backend-switchable ProGAN layers and models for PyTorch."""
from . import functional, reference
from .backend import BackendUnavailableError, get_backend, set_backend, use_backend
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm
from .models import Discriminator, Generator
from . import csrc, kernels  # noqa: E402,F401  the cuda and triton implementations of the ops register on import
from .csrc.extension import CudaExtensionError, cuda_extension  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EqualizedConv2d", "EqualizedLinear", "PixelNorm", "MinibatchStdDev", "Generator", "Discriminator",
           "functional", "reference", "set_backend", "get_backend", "use_backend", "BackendUnavailableError",
           "cuda_extension", "CudaExtensionError"]
