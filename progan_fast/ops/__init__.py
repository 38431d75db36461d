"""One module per op: its public function, input checks, plain-PyTorch reference and `Op` entry. The backends
register their implementations on these entries: Triton in `progan_fast.kernels.<op>`, CUDA in
`progan_fast.csrc.<op>`."""
