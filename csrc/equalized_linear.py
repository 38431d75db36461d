"""CUDA backend of equalized_linear (`progan_fast.ops.equalized_linear`): cuBLAS matmul with the scaled weight,
then the CUDA bias_act."""
from progan_fast.csrc.bias_act import bias_act_cuda
from progan_fast.ops.equalized_linear import equalized_linear_op, matmul_then_bias_act

equalized_linear_op.register("cuda", matmul_then_bias_act(bias_act_cuda))
