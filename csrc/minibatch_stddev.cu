// Minibatch stddev with the official grouping: x [N, C, H, W] seen as [G, M, C, H, W], so sample
// n = g * M + m is in group m. Per (m, c, h, w): mean and sd = sqrt(biased variance + eps) over g.
// One thread handles one (m, c, h, w) for all G samples; blockIdx.y is m. Statistics are recomputed
// from x in each pass (G loads) instead of being stored.
#include "common.cuh"

namespace {

struct GroupStats {
    float mean, sd;
};

// Element offsets of position k in [0, C*H*W) for two tensors of one shape, walking the smaller of the
// channel and spatial strides first so that neighbouring threads read neighbouring memory.
struct Position {
    int64_t c, s;
    __device__ Position(int64_t k, const pf_strides& layout, int64_t channels, int64_t spatial) {
        if (layout.c < layout.s) {
            s = pf::divide(k, channels);
            c = k - s * channels;
        } else {
            c = pf::divide(k, spatial);
            s = k - c * spatial;
        }
    }
    __device__ int64_t offset(const pf_strides& st, int64_t sample) const {
        return sample * st.n + c * st.c + s * st.s;
    }
};

template <typename T>
__device__ __forceinline__ GroupStats group_stats(const T* x, int64_t offset, int64_t group_stride,
                                                  int64_t group_size, float eps) {
    float sum = 0.f;
    for (int64_t g = 0; g < group_size; ++g) sum += pf::to_float(x[offset + g * group_stride]);
    const float mean = sum / group_size;
    float var = 0.f;
    for (int64_t g = 0; g < group_size; ++g) {
        const float d = pf::to_float(x[offset + g * group_stride]) - mean;
        var += d * d;
    }
    return {mean, sqrtf(var / group_size + eps)};
}

template <typename T>
__global__ void mbstd_stats_kernel(float* stats, const T* x, pf_strides xs, int64_t channels, int64_t spatial,
                                   int64_t groups, int64_t group_size, float eps) {
    const int64_t m = blockIdx.y, size = channels * spatial;
    float partial = 0.f;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < size; k += (int64_t)blockDim.x * gridDim.x) {
        const Position p(k, xs, channels, spatial);
        partial += group_stats(x, p.offset(xs, m), groups * xs.n, group_size, eps).sd;
    }
    partial = pf::block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(&stats[m], partial / size);
}

template <typename T>
__global__ void mbstd_backward_kernel(T* grad_x, const T* grad_out, pf_strides gos, const T* x, pf_strides xs,
                                      const float* grad_stats, int64_t channels, int64_t spatial, int64_t groups,
                                      int64_t group_size, float eps) {
    const int64_t m = blockIdx.y, size = channels * spatial;
    const float scale = grad_stats[m] / ((float)size * group_size);
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < size; k += (int64_t)blockDim.x * gridDim.x) {
        const Position p(k, xs, channels, spatial);
        const int64_t xo = p.offset(xs, m), go = p.offset(gos, m);
        const GroupStats st = group_stats(x, xo, groups * xs.n, group_size, eps);
        const float coef = scale / st.sd;
        for (int64_t g = 0; g < group_size; ++g) {
            const int64_t i = xo + g * groups * xs.n;
            const float d = pf::to_float(x[i]) - st.mean;
            grad_x[i] = pf::from_float<T>(pf::to_float(grad_out[go + g * groups * gos.n]) + coef * d);
        }
    }
}

// With u_g = gg_g * grad_stats[m] / (K G), d_g = x_g - mean:
//   grad_x2_j = (u_j - mean_g u) / sd - (sum_g u_g d_g) d_j / (G sd^3)
//   grad_stats2[m] = sum over g, c, h, w of gg_g d_g / (K G sd)
template <typename T>
__global__ void mbstd_double_backward_kernel(T* grad_x2, float* grad_stats2, const T* gg, const T* x, pf_strides xs,
                                             const float* grad_stats, int64_t channels, int64_t spatial,
                                             int64_t groups, int64_t group_size, float eps) {
    const int64_t m = blockIdx.y, size = channels * spatial, group_stride = groups * xs.n;
    const float u_scale = grad_stats[m] / ((float)size * group_size);
    float partial = 0.f;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < size; k += (int64_t)blockDim.x * gridDim.x) {
        const Position p(k, xs, channels, spatial);
        const int64_t xo = p.offset(xs, m);
        const GroupStats st = group_stats(x, xo, group_stride, group_size, eps);
        float gg_sum = 0.f, gg_dot_d = 0.f;
        for (int64_t g = 0; g < group_size; ++g) {
            const int64_t i = xo + g * group_stride;
            const float v = pf::to_float(gg[i]);
            gg_sum += v;
            gg_dot_d += v * (pf::to_float(x[i]) - st.mean);
        }
        const float inv_sd = 1.f / st.sd;
        partial += gg_dot_d * inv_sd;
        const float u_mean = u_scale * gg_sum / group_size;
        const float d_coef = u_scale * gg_dot_d * inv_sd * inv_sd * inv_sd / group_size;
        for (int64_t g = 0; g < group_size; ++g) {
            const int64_t i = xo + g * group_stride;
            const float u = u_scale * pf::to_float(gg[i]);
            grad_x2[i] = pf::from_float<T>((u - u_mean) * inv_sd - d_coef * (pf::to_float(x[i]) - st.mean));
        }
    }
    partial = pf::block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(&grad_stats2[m], partial / ((float)size * group_size));
}

dim3 grid_for(int64_t channels, int64_t spatial, int64_t groups) {
    return dim3(pf::blocks_for(channels * spatial), (unsigned int)groups);
}

}  // namespace

extern "C" const char* pf_mbstd_stats(int device, cudaStream_t stream, int dtype, float* stats, const void* x,
                                      pf_strides xs, int64_t batch, int64_t channels, int64_t spatial,
                                      int64_t group_size, float eps) {
    const int64_t groups = batch / group_size;
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        mbstd_stats_kernel<T><<<grid_for(channels, spatial, groups), pf::kThreads, 0, stream>>>(
            stats, static_cast<const T*>(x), xs, channels, spatial, groups, group_size, eps);
    });
}

extern "C" const char* pf_mbstd_backward(int device, cudaStream_t stream, int dtype, void* grad_x,
                                         const void* grad_out, pf_strides gos, const void* x, pf_strides xs,
                                         const float* grad_stats, int64_t batch, int64_t channels, int64_t spatial,
                                         int64_t group_size, float eps) {
    const int64_t groups = batch / group_size;
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        mbstd_backward_kernel<T><<<grid_for(channels, spatial, groups), pf::kThreads, 0, stream>>>(
            static_cast<T*>(grad_x), static_cast<const T*>(grad_out), gos, static_cast<const T*>(x), xs, grad_stats,
            channels, spatial, groups, group_size, eps);
    });
}

extern "C" const char* pf_mbstd_double_backward(int device, cudaStream_t stream, int dtype, void* grad_x2,
                                                float* grad_stats2, const void* gg, const void* x, pf_strides xs,
                                                const float* grad_stats, int64_t batch, int64_t channels,
                                                int64_t spatial, int64_t group_size, float eps) {
    const int64_t groups = batch / group_size;
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        mbstd_double_backward_kernel<T><<<grid_for(channels, spatial, groups), pf::kThreads, 0, stream>>>(
            static_cast<T*>(grad_x2), grad_stats2, static_cast<const T*>(gg), static_cast<const T*>(x), xs,
            grad_stats, channels, spatial, groups, group_size, eps);
    });
}
