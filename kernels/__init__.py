"""The triton backend: one module per op, each holding all of that op's Triton backend (the @triton.jit kernels,
their launchers, the torch.library custom ops with fake implementations and autograd, and the registration of
the op's triton implementation on its `progan_fast.ops` entry).

Imported (and so registered) by `import progan_fast`, as `progan_fast.kernels` (the folder `progan_fast/kernels`
links here). Without the triton package nothing registers and the backend reports itself unavailable.
"""
if __name__ != "progan_fast.kernels":
    raise ImportError(f"the Triton kernels are the package progan_fast.kernels; import them as such, not as "
                      f"{__name__!r} (import progan_fast registers them)")

try:
    import triton  # noqa: F401
except ImportError:
    pass
else:
    from progan_fast.kernels import (bias_act, equalized_conv, equalized_linear, fade,  # noqa: F401
                                     minibatch_stddev, pixel_norm)
