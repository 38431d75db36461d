// Device helpers shared by the kernels: storage conversions, dtype dispatch, block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "progan_fast_cuda.h"

namespace pf {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// a / b for a, b >= 0, in 32 bits when both fit: 64-bit integer division is several times slower on GPUs.
__device__ __forceinline__ int64_t divide(int64_t a, int64_t b) {
    return ((a | b) >> 32) == 0 ? (int64_t)((uint32_t)a / (uint32_t)b) : a / b;
}

inline unsigned int blocks_for(int64_t work) {
    int64_t blocks = (work + kThreads - 1) / kThreads;
    return (unsigned int)(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

template <typename T> struct Storage { using type = T; };

// Selects the device, runs launch(Storage<T>{}) for the dtype code and returns NULL or the CUDA error.
template <typename Launch>
const char* dispatch(int device, int dtype, Launch launch) {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    switch (dtype) {
        case PF_FLOAT32: launch(Storage<float>{}); break;
        case PF_FLOAT16: launch(Storage<__half>{}); break;
        case PF_BFLOAT16: launch(Storage<__nv_bfloat16>{}); break;
        default: return "unsupported dtype code";
    }
    err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? warp_sums[lane] : 0.f;
    if (warp == 0)
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

}  // namespace pf
