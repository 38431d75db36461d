"""Metrics for generated images: the sliced Wasserstein distance of the ProGAN paper.

`python -m progan_fast.metrics CHECKPOINT` computes it for any checkpoint of a training run.
"""
from .swd import laplacian_pyramid, sliced_wasserstein, swd, to_uint8

__all__ = ["swd", "sliced_wasserstein", "laplacian_pyramid", "to_uint8"]
