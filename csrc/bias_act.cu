// Fused bias + LeakyReLU (or linear): forward, backward and the backward's backward.
// The backward reads the LeakyReLU mask from the sign of the saved output y (slope >= 0), never x.
// Tensors are dense in any memory format: the channel of offset i is (i / channel_stride) % channels.
#include "common.cuh"

namespace {

__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t channels, int64_t channel_stride) {
    const int64_t q = pf::divide(i, channel_stride);
    return q - pf::divide(q, channels) * channels;
}

template <typename T>
__global__ void bias_act_forward_kernel(T* y, const T* x, const float* bias, int64_t numel, int64_t channels,
                                        int64_t channel_stride, float slope) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x) {
        float v = pf::to_float(x[i]);
        if (bias != nullptr) v += bias[channel_of(i, channels, channel_stride)];
        y[i] = pf::from_float<T>(v > 0.f ? v : v * slope);
    }
}

template <typename T>
__global__ void lrelu_masked_grad_kernel(T* out, const T* grad, const float* bias, const T* y, int64_t numel,
                                         int64_t channels, int64_t channel_stride, float slope) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x) {
        float g = pf::to_float(grad[i]);
        if (bias != nullptr) g += bias[channel_of(i, channels, channel_stride)];
        out[i] = pf::from_float<T>(pf::to_float(y[i]) > 0.f ? g : g * slope);
    }
}

}  // namespace

extern "C" const char* pf_bias_act_forward(int device, cudaStream_t stream, int dtype, void* y, const void* x,
                                           const float* bias, int64_t numel, int64_t channels,
                                           int64_t channel_stride, float slope) {
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        bias_act_forward_kernel<T><<<pf::blocks_for(numel), pf::kThreads, 0, stream>>>(
            static_cast<T*>(y), static_cast<const T*>(x), bias, numel, channels, channel_stride, slope);
    });
}

extern "C" const char* pf_lrelu_masked_grad(int device, cudaStream_t stream, int dtype, void* out, const void* grad,
                                            const float* bias, const void* y, int64_t numel, int64_t channels,
                                            int64_t channel_stride, float slope) {
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        lrelu_masked_grad_kernel<T><<<pf::blocks_for(numel), pf::kThreads, 0, stream>>>(
            static_cast<T*>(out), static_cast<const T*>(grad), bias, static_cast<const T*>(y), numel, channels,
            channel_stride, slope);
    });
}
