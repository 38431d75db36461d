"""progan_fast. The Triton backend (./kernels) and the CUDA backend (./csrc) are the subpackages progan_fast.kernels
and progan_fast.csrc: progan_fast/kernels and progan_fast/csrc link to those folders, so the one import name works
the same from a checkout, an editable install and a wheel (no top-level `kernels` or `csrc` module).

PROGAN_FAST_BUILD_CUDA=1 also builds the cuda backend's extension into its cache at install time (torch must be
importable: `pip install --no-build-isolation .`); without it the extension is built on first use.
"""
import os
import sys

from setuptools import find_packages, setup

if os.environ.get("PROGAN_FAST_BUILD_CUDA") == "1":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from progan_fast.cache import cache_root
    from progan_fast.csrc.extension import build_or_load

    build_or_load(cache_root())

setup(
    name="progan-fast",
    version="0.1.0",
    description="Fast, correct Progressive GAN (ProGAN) training and fused GAN layers for PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["progan_fast", "progan_fast.*"]),
    # The CUDA sources ship with the package: the cuda backend compiles them on first use.
    package_data={"progan_fast.csrc": ["*.cu", "*.cuh", "*.h", "*.cpp", "README.md"]},
    # No upper bound and no CUDA pin: an installed torch (CPU or CUDA build) that satisfies this is kept.
    install_requires=[
        # Both tested in CI: torch 2.13 and 2.11 (the GPU machine's), triton 3.9 and 3.6 (the sm_90 compile check).
        "torch>=2.9",  # torch.backends.cudnn.conv.fp32_precision (the triton conv's precision) is new in 2.9
        "triton>=3.6; platform_system == 'Linux'",
        "ninja",
        "numpy",
        "pillow",
        "safetensors",  # checkpoints that load without executing code (no pickle)
        "tqdm",
        "scikit-learn",  # its bundled digits are the built-in dataset: real images with no download
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "tensorboard"],
        "tensorboard": ["tensorboard"],
        "bench": ["pytest-benchmark", "nvidia-ml-py"],
    },
)
