"""The cuda backend: CUDA kernels (`*.cu`, CUDA headers only), their Python binding (`progan_fast_cuda.cpp`), the
build of the extension (`extension.py`) and one module per op with its custom ops, autograd and registration.

Imported (and so registered) by `import progan_fast`, as `progan_fast.csrc` (the folder `progan_fast/csrc` links
here). The extension itself is compiled on first use.
"""
if __name__ != "progan_fast.csrc":
    raise ImportError(f"the CUDA backend is the package progan_fast.csrc; import it as such, not as {__name__!r}")

from progan_fast.csrc import (bias_act, equalized_conv, equalized_linear, extension,  # noqa: E402,F401
                              gradient_penalty, minibatch_stddev)
