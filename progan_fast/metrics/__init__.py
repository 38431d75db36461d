"""Metrics for generated images: the sliced Wasserstein distance of the ProGAN paper.

`python -m progan_fast.metrics CHECKPOINT` computes it for any checkpoint of a training run.
"""
from ..images import to_uint8
from .evaluate import generator_swd
from .swd import laplacian_pyramid, sliced_wasserstein, swd

__all__ = ["swd", "sliced_wasserstein", "laplacian_pyramid", "generator_swd", "to_uint8"]
