// Python binding of the CUDA kernels: checks and lays out the tensors, allocates the outputs and calls
// the launchers of progan_fast_cuda.h. Only torch's CPU-side headers are used (CUDA streams arrive as
// integers from Python), so this file compiles against any torch build; the kernels live in a separate
// library loaded before this module.
#include <torch/extension.h>

#include "progan_fast_cuda.h"

namespace {

using torch::Tensor;

cudaStream_t as_stream(int64_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void check_launch(const char* error, const char* op) { TORCH_CHECK(error == nullptr, op, ": CUDA error: ", error); }

int dtype_code(const Tensor& t, const char* op) {
    switch (t.scalar_type()) {
        case torch::kFloat: return PF_FLOAT32;
        case torch::kHalf: return PF_FLOAT16;
        case torch::kBFloat16: return PF_BFLOAT16;
        default:
            TORCH_CHECK(false, op, ": the CUDA kernels take float32, float16 or bfloat16 tensors, got ",
                        t.scalar_type(), "; use the torch backend for other dtypes");
    }
}

// `t` must be a CUDA tensor on the device of `like` with its dtype; returns the dtype code.
int check_input(const Tensor& t, const Tensor& like, const char* op, const char* name) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got a ", t.device(),
                " tensor; move the tensors to a GPU or use the torch backend");
    TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
                like.device(), "; move both to the same device");
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                " but the input has ", like.scalar_type(), "; convert it");
    return dtype_code(t, op);
}

Tensor dense(const Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

// `t` laid out with the strides of `layout` (same shape), copied only when they differ.
Tensor with_layout_of(const Tensor& t, const Tensor& layout) {
    return t.strides() == layout.strides() ? t : torch::empty_like(layout).copy_(t);
}

// A [N, C, H, W] tensor in the contiguous or channels_last format, where H and W merge into one dim.
Tensor nchw_or_channels_last(const Tensor& t) {
    return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast) ? t : t.contiguous();
}

pf_strides strides_of(const Tensor& t) {
    return {t.stride(0), t.stride(1), t.size(3) == 1 ? t.stride(2) : t.stride(3)};
}

// Per-channel fp32 vector on x's device (rounded to x's dtype first, as the reference adds it), or empty.
Tensor channel_vector(const c10::optional<Tensor>& v, const Tensor& x, int64_t dim, const char* op) {
    if (!v.has_value() || !v->defined()) return Tensor();
    TORCH_CHECK(v->is_cuda() && v->device() == x.device(), op, ": the bias must be on the input's device ",
                x.device(), ", got ", v->device());
    TORCH_CHECK(v->dim() == 1 && v->size(0) == x.size(dim), op, ": the bias must have shape [", x.size(dim),
                "], got ", v->sizes());
    return v->to(x.scalar_type()).to(torch::kFloat).contiguous();
}

const float* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

Tensor bias_act_forward(Tensor x, c10::optional<Tensor> bias, double slope, int64_t dim, int64_t stream) {
    const char* op = "bias_act";
    const int dtype = check_input(x, x, op, "x");
    x = dense(x);
    const Tensor b = channel_vector(bias, x, dim, op);
    Tensor y = torch::empty_like(x);
    check_launch(pf_bias_act_forward(x.get_device(), as_stream(stream), dtype, y.data_ptr(), x.data_ptr(),
                                     data_or_null(b), x.numel(), x.size(dim), x.stride(dim), (float)slope),
                 op);
    return y;
}

Tensor lrelu_masked_grad(Tensor grad, c10::optional<Tensor> bias, Tensor y, double slope, int64_t dim,
                         int64_t stream) {
    const char* op = "bias_act backward";
    const int dtype = check_input(y, y, op, "y");
    check_input(grad, y, op, "the gradient");
    y = dense(y);
    grad = with_layout_of(grad, y);
    const Tensor b = channel_vector(bias, y, dim, op);
    Tensor out = torch::empty_like(y);
    check_launch(pf_lrelu_masked_grad(y.get_device(), as_stream(stream), dtype, out.data_ptr(), grad.data_ptr(),
                                      data_or_null(b), y.data_ptr(), y.numel(), y.size(dim), y.stride(dim),
                                      (float)slope),
                 op);
    return out;
}

// Checks x [N, C, H, W] for the minibatch-stddev kernels; returns the number of groups M.
int64_t check_groups(const Tensor& x, int64_t group_size, const char* op) {
    TORCH_CHECK(x.dim() == 4, op, ": expects x of shape [N, C, H, W], got ", x.sizes());
    TORCH_CHECK(group_size >= 1 && x.size(0) % group_size == 0, op, ": batch size ", x.size(0),
                " is not a multiple of the group size ", group_size);
    const int64_t groups = x.size(0) / group_size;
    TORCH_CHECK(groups <= 65535, op, ": at most 65535 groups (batch / group size), got ", groups);
    return groups;
}

Tensor group_vector(const Tensor& v, const Tensor& x, int64_t groups, const char* op) {
    TORCH_CHECK(v.is_cuda() && v.device() == x.device() && v.numel() == groups, op,
                ": the per-group gradient must be a CUDA tensor of ", groups, " values on ", x.device());
    return v.to(torch::kFloat).contiguous();
}

Tensor minibatch_stddev_stats(Tensor x, int64_t group_size, double eps, int64_t stream) {
    const char* op = "minibatch_stddev";
    const int dtype = check_input(x, x, op, "x");
    const int64_t groups = check_groups(x, group_size, op);
    x = nchw_or_channels_last(x);
    Tensor stats = torch::zeros({groups}, x.options().dtype(torch::kFloat));
    check_launch(pf_mbstd_stats(x.get_device(), as_stream(stream), dtype, stats.data_ptr<float>(), x.data_ptr(),
                                strides_of(x), x.size(0), x.size(1), x.size(2) * x.size(3), group_size, (float)eps),
                 op);
    return stats;
}

Tensor minibatch_stddev_backward(Tensor grad_out, Tensor x, Tensor grad_stats, int64_t group_size, double eps,
                                 int64_t stream) {
    const char* op = "minibatch_stddev backward";
    const int dtype = check_input(x, x, op, "x");
    check_input(grad_out, x, op, "the output gradient");
    const int64_t groups = check_groups(x, group_size, op);
    TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(1) == x.size(1) + 1, op,
                ": the output gradient must have C + 1 channels, got ", grad_out.sizes());
    x = nchw_or_channels_last(x);
    grad_out = nchw_or_channels_last(grad_out);
    grad_stats = group_vector(grad_stats, x, groups, op);
    Tensor grad_x = torch::empty_like(x);
    check_launch(pf_mbstd_backward(x.get_device(), as_stream(stream), dtype, grad_x.data_ptr(), grad_out.data_ptr(),
                                   strides_of(grad_out), x.data_ptr(), strides_of(x), grad_stats.data_ptr<float>(),
                                   x.size(0), x.size(1), x.size(2) * x.size(3), group_size, (float)eps),
                 op);
    return grad_x;
}

std::tuple<Tensor, Tensor> minibatch_stddev_double_backward(Tensor gg, Tensor x, Tensor grad_stats,
                                                            int64_t group_size, double eps, int64_t stream) {
    const char* op = "minibatch_stddev double backward";
    const int dtype = check_input(x, x, op, "x");
    check_input(gg, x, op, "the gradient of grad_x");
    const int64_t groups = check_groups(x, group_size, op);
    x = nchw_or_channels_last(x);
    gg = with_layout_of(gg, x);
    grad_stats = group_vector(grad_stats, x, groups, op);
    Tensor grad_x2 = torch::empty_like(x);
    Tensor grad_stats2 = torch::zeros({groups}, x.options().dtype(torch::kFloat));
    check_launch(pf_mbstd_double_backward(x.get_device(), as_stream(stream), dtype, grad_x2.data_ptr(),
                                          grad_stats2.data_ptr<float>(), gg.data_ptr(), x.data_ptr(), strides_of(x),
                                          grad_stats.data_ptr<float>(), x.size(0), x.size(1),
                                          x.size(2) * x.size(3), group_size, (float)eps),
                 op);
    return {grad_x2, grad_stats2};
}

// g [N, ...] with each sample's elements in one dense block (contiguous, or channels_last for 4-D).
Tensor samples_dense(const Tensor& g) {
    const bool channels_last = g.dim() == 4 && g.is_contiguous(at::MemoryFormat::ChannelsLast);
    return g.is_contiguous() || channels_last ? g : g.contiguous();
}

std::tuple<Tensor, Tensor> gradient_penalty_forward(Tensor g, double weight, double target, int64_t stream) {
    const char* op = "gradient_penalty";
    const int dtype = check_input(g, g, op, "the gradient");
    TORCH_CHECK(g.dim() >= 2 && g.size(0) > 0, op, ": expects a per-sample gradient [N, ...], got ", g.sizes());
    TORCH_CHECK(g.size(0) <= 65535, op, ": at most 65535 samples, got ", g.size(0));
    g = samples_dense(g);
    const int64_t batch = g.size(0);
    const auto options = g.options().dtype(torch::kFloat);
    Tensor penalty = torch::empty({}, options), coef = torch::empty({batch}, options);
    Tensor workspace = torch::zeros({batch + 1}, options);
    check_launch(pf_gradient_penalty_forward(g.get_device(), as_stream(stream), dtype, penalty.data_ptr<float>(),
                                             coef.data_ptr<float>(), workspace.data_ptr<float>(), g.data_ptr(), batch,
                                             g.numel() / batch, (float)weight, (float)target),
                 op);
    return {penalty, coef};
}

Tensor gradient_penalty_backward(Tensor g, Tensor coef, Tensor grad_penalty, int64_t stream) {
    const char* op = "gradient_penalty backward";
    const int dtype = check_input(g, g, op, "the gradient");
    TORCH_CHECK(coef.is_cuda() && grad_penalty.is_cuda() && coef.numel() == g.size(0) && grad_penalty.numel() == 1,
                op, ": coef must hold one value per sample and grad_penalty one value, on the gradient's device");
    g = samples_dense(g);
    coef = coef.to(torch::kFloat).contiguous();
    grad_penalty = grad_penalty.to(torch::kFloat).contiguous();
    Tensor grad_g = torch::empty_like(g);
    check_launch(pf_gradient_penalty_backward(g.get_device(), as_stream(stream), dtype, grad_g.data_ptr(),
                                              g.data_ptr(), coef.data_ptr<float>(), grad_penalty.data_ptr<float>(),
                                              g.size(0), g.numel() / g.size(0)),
                 op);
    return grad_g;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "progan_fast CUDA kernels (the `cuda` backend); the last argument of each is the CUDA stream";
    m.def("bias_act_forward", &bias_act_forward);
    m.def("lrelu_masked_grad", &lrelu_masked_grad);
    m.def("minibatch_stddev_stats", &minibatch_stddev_stats);
    m.def("minibatch_stddev_backward", &minibatch_stddev_backward);
    m.def("minibatch_stddev_double_backward", &minibatch_stddev_double_backward);
    m.def("gradient_penalty_forward", &gradient_penalty_forward);
    m.def("gradient_penalty_backward", &gradient_penalty_backward);
}
