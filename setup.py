"""progan_fast: the Triton kernels in ./kernels install as progan_fast.kernels (no top-level `kernels` module)."""
from setuptools import find_packages, setup

setup(
    name="progan-fast",
    version="0.1.0",
    description="Fast, correct Progressive GAN (ProGAN) training and fused GAN layers for PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["progan_fast", "progan_fast.*"]) + ["progan_fast.kernels"],
    package_dir={"progan_fast.kernels": "kernels"},
    # No upper bound and no CUDA pin: an installed torch (CPU or CUDA build) that satisfies this is kept.
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
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
