"""One module per op: its plain-PyTorch reference, its backend dispatch and (with the accelerated
backends) its autograd Functions. Triton kernels live in `progan_fast.kernels.<op>`, CUDA kernels in
`csrc/<op>.cu`, layers in `progan_fast.layers`."""
