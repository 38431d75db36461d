"""Triton kernels of progan_fast, one module per op (installed as `progan_fast.kernels`).

Importing this package does not import triton; each op module imports it when its kernels are first used.
"""
