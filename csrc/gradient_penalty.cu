// WGAN-GP penalty weight * mean_n (||g_n|| - target)^2 and its gradient coefficients in one pass over g.
// Each block sums g^2 over a chunk of one sample; the last block to finish turns the per-sample sums
// into the penalty and coef[n] = 2 weight (||g_n|| - target) / (N ||g_n||), so that the gradient is
// coef[n] * g_n (zero where g_n = 0, as in torch's norm backward).
#include "common.cuh"

namespace {

constexpr int64_t kElementsPerThread = 16;
constexpr int64_t kMaxBlocksPerSample = 1024;

template <typename T>
__global__ void gradient_penalty_forward_kernel(float* penalty, float* coef, float* workspace, const T* g,
                                                int64_t batch, int64_t sample_size, float weight, float target) {
    const int64_t n = blockIdx.y;
    const T* sample = g + n * sample_size;
    float partial = 0.f;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < sample_size;
         k += (int64_t)blockDim.x * gridDim.x) {
        const float v = pf::to_float(sample[k]);
        partial += v * v;
    }
    partial = pf::block_sum(partial);

    __shared__ bool last_block;
    if (threadIdx.x == 0) {
        atomicAdd(&workspace[n], partial);
        __threadfence();  // the sum is visible to the block that sees the final count
        unsigned int* finished = reinterpret_cast<unsigned int*>(workspace + batch);
        last_block = atomicAdd(finished, 1u) == gridDim.x * gridDim.y - 1;
    }
    __syncthreads();
    if (!last_block) return;

    const volatile float* squares = workspace;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
        const float norm = sqrtf(squares[i]), diff = norm - target;
        coef[i] = norm > 0.f ? 2.f * weight * diff / (batch * norm) : 0.f;
        sum += diff * diff;
    }
    sum = pf::block_sum(sum);
    if (threadIdx.x == 0) penalty[0] = weight * sum / batch;
}

template <typename T>
__global__ void gradient_penalty_backward_kernel(T* grad_g, const T* g, const float* coef, const float* grad_penalty,
                                                 int64_t numel, int64_t sample_size) {
    const float scale = grad_penalty[0];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x)
        grad_g[i] = pf::from_float<T>(pf::to_float(g[i]) * coef[pf::divide(i, sample_size)] * scale);
}

}  // namespace

extern "C" const char* pf_gradient_penalty_forward(int device, cudaStream_t stream, int dtype, float* penalty,
                                                   float* coef, float* workspace, const void* g, int64_t batch,
                                                   int64_t sample_size, float weight, float target) {
    int64_t blocks = (sample_size + pf::kThreads * kElementsPerThread - 1) / (pf::kThreads * kElementsPerThread);
    blocks = blocks < 1 ? 1 : (blocks > kMaxBlocksPerSample ? kMaxBlocksPerSample : blocks);
    const dim3 grid((unsigned int)blocks, (unsigned int)batch);
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        gradient_penalty_forward_kernel<T><<<grid, pf::kThreads, 0, stream>>>(
            penalty, coef, workspace, static_cast<const T*>(g), batch, sample_size, weight, target);
    });
}

extern "C" const char* pf_gradient_penalty_backward(int device, cudaStream_t stream, int dtype, void* grad_g,
                                                    const void* g, const float* coef, const float* grad_penalty,
                                                    int64_t batch, int64_t sample_size) {
    const int64_t numel = batch * sample_size;
    return pf::dispatch(device, dtype, [&](auto storage) {
        using T = typename decltype(storage)::type;
        gradient_penalty_backward_kernel<T><<<pf::blocks_for(numel), pf::kThreads, 0, stream>>>(
            static_cast<T*>(grad_g), static_cast<const T*>(g), coef, grad_penalty, numel, sample_size);
    });
}
