/* Launch functions of the CUDA kernels, shared by the .cu files and the binding.
 *
 * Plain C and free of CUDA and torch headers, so that the binding compiles against a CPU-only
 * torch. Every launcher returns NULL on success, else the CUDA error string.
 * Tensors are given by pointers plus sizes and element strides; storage is fp32, fp16 or bf16
 * (the `dtype` code below), arithmetic is fp32.
 */
#pragma once

#include <stdint.h>

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t; /* the same typedef as the CUDA runtime's */

#ifdef __cplusplus
extern "C" {
#endif

enum { PF_FLOAT32 = 0, PF_FLOAT16 = 1, PF_BFLOAT16 = 2 };

/* A 4-D tensor [N, C, H, W] seen as [N, C, S = H * W]: element strides of the three dims. */
typedef struct {
    int64_t n, c, s;
} pf_strides;

/* bias_act on a dense tensor (any memory format): the channel of the element at memory offset i
 * is (i / channel_stride) % channels. bias may be NULL. slope 1 is the linear activation. */
const char* pf_bias_act_forward(int device, cudaStream_t stream, int dtype, void* y, const void* x,
                                const float* bias, int64_t numel, int64_t channels, int64_t channel_stride,
                                float slope);

/* out = (grad + bias[c]) * (y > 0 ? 1 : slope); grad, y and out share one layout, bias may be NULL.
 * The LeakyReLU backward (bias NULL) and the backward of that backward (bias = gradient of db). */
const char* pf_lrelu_masked_grad(int device, cudaStream_t stream, int dtype, void* out, const void* grad,
                                 const float* bias, const void* y, int64_t numel, int64_t channels,
                                 int64_t channel_stride, float slope);

/* Minibatch stddev, official grouping: sample n is in group n % M, M = N / group_size.
 * stats[M] (zeroed fp32) receives mean over C, H, W of sqrt(biased group variance + eps). */
const char* pf_mbstd_stats(int device, cudaStream_t stream, int dtype, float* stats, const void* x,
                           pf_strides x_strides, int64_t batch, int64_t channels, int64_t spatial,
                           int64_t group_size, float eps);

/* grad_x = grad_out[:, :C] + grad_stats[n % M] * (x - mean) / (C*H*W * group_size * sd);
 * grad_stats[M] is the stddev channel's gradient summed over its group and H, W. grad_x has x's strides. */
const char* pf_mbstd_backward(int device, cudaStream_t stream, int dtype, void* grad_x, const void* grad_out,
                              pf_strides grad_out_strides, const void* x, pf_strides x_strides,
                              const float* grad_stats, int64_t batch, int64_t channels, int64_t spatial,
                              int64_t group_size, float eps);

/* Backward of pf_mbstd_backward for the incoming gradient gg of grad_x (x's strides):
 * grad_x2 (x's strides) is its gradient with respect to x; grad_stats2[M] (zeroed fp32) with respect
 * to the stddev channel of grad_out. */
const char* pf_mbstd_double_backward(int device, cudaStream_t stream, int dtype, void* grad_x2,
                                     float* grad_stats2, const void* gg, const void* x, pf_strides x_strides,
                                     const float* grad_stats, int64_t batch, int64_t channels, int64_t spatial,
                                     int64_t group_size, float eps);

/* WGAN-GP on g [N, K] (each sample dense): one pass over g gives penalty[0] = weight * mean_n
 * (||g_n|| - target)^2 and coef[n] = d penalty / d g_n / g_n. workspace: N + 1 zeroed floats. */
const char* pf_gradient_penalty_forward(int device, cudaStream_t stream, int dtype, float* penalty, float* coef,
                                        float* workspace, const void* g, int64_t batch, int64_t sample_size,
                                        float weight, float target);

/* grad_g = g * coef[n] * grad_penalty[0]. */
const char* pf_gradient_penalty_backward(int device, cudaStream_t stream, int dtype, void* grad_g, const void* g,
                                         const float* coef, const float* grad_penalty, int64_t batch,
                                         int64_t sample_size);

#ifdef __cplusplus
}
#endif
