"""Triton backend of equalized_linear (`progan_fast.ops.equalized_linear`): cuBLAS matmul with the scaled
weight, then the Triton bias_act (a GEMM kernel of our own would not beat cuBLAS for these shapes)."""
from progan_fast.kernels.bias_act import bias_act_triton
from progan_fast.ops.equalized_linear import equalized_linear_op, matmul_then_bias_act

equalized_linear_op.register("triton", matmul_then_bias_act(bias_act_triton))
