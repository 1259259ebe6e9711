// CUDA kernels of the SIFA ops on NCTHW tensors: one thread per output element, neighbouring
// threads on neighbouring pixels so feature reads coalesce along W. Math in float (double for
// double) for every storage dtype; gradients scattered by bilinear sampling are accumulated with
// atomics in a float (double) buffer and cast at the end.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../sifa.h"

namespace sifa {
namespace ops {
namespace {

using math::Geometry;

constexpr int kThreads = 256;

inline dim3 grid_for(int64_t n) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20)));
}

#define SIFA_KERNEL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// corr[n, grp·K+k, t, hw] = Σ_{c∈grp} weight[c,t,k] · x[n,c,prev(t),hw] · S(x[n,c,t], p_k)
template <typename scalar_t>
__global__ void defcor_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                      const scalar_t* __restrict__ wt, scalar_t* __restrict__ corr, Geometry g,
                                      int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, grp = (i / (HW * g.T)) % g.groups, n = i / (HW * g.T * g.groups);
    const int64_t tp = g.prev_frame(t);
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      acc_t acc = 0;
      for (int64_t c = grp * Cg; c < (grp + 1) * Cg; ++c) {
        const scalar_t* video = x + (n * g.C + c) * g.T * HW;
        acc += acc_t(wt[(c * g.T + t) * K + k]) * acc_t(video[tp * HW + hw]) * math::interpolate(b, video + t * HW, 1);
      }
      corr[g.score_index(n, grp, k, t, hw)] = static_cast<scalar_t>(acc);
    }
  }
}

// out[n, c, t, hw] = Σ_k scores[n, g(c)·K+k, t, hw] · S(x[n,c,t], p_k)
template <typename scalar_t>
__global__ void defagg_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                      const scalar_t* __restrict__ sc, scalar_t* __restrict__ out, Geometry g,
                                      int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, c = (i / (HW * g.T)) % g.C, n = i / (HW * g.T * g.C);
    const int64_t grp = c / Cg;
    const scalar_t* plane = x + ((n * g.C + c) * g.T + t) * HW;
    acc_t acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      acc += acc_t(sc[g.score_index(n, grp, k, t, hw)]) * math::interpolate(b, plane, 1);
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ void scatter(acc_t* plane, const math::Bilinear<acc_t>& b, acc_t v) {
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (b.weight[j] != acc_t(0)) gpuAtomicAdd(plane + b.index[j], v * b.weight[j]);
}

// defcor's gradients w.r.t. x (keys: scattered; query: written per frame t into grad_query, folded
// onto prev(t) by the host) and w.r.t. weight, one thread per (n, c, t, hw).
template <typename scalar_t, typename acc_t>
__global__ void defcor_backward_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ off, const scalar_t* __restrict__ wt,
                                             acc_t* grad_x, acc_t* __restrict__ grad_query, acc_t* grad_w, Geometry g,
                                             int64_t total) {
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, c = (i / (HW * g.T)) % g.C, n = i / (HW * g.T * g.C);
    const int64_t grp = c / Cg;
    const scalar_t* video = x + (n * g.C + c) * g.T * HW;
    const acc_t q = video[g.prev_frame(t) * HW + hw];
    acc_t gq = 0;
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      const acc_t gk = grad[g.score_index(n, grp, k, t, hw)];
      const acc_t wk = wt[(c * g.T + t) * K + k];
      const acc_t s = math::interpolate(b, video + t * HW, 1);
      gq += gk * wk * s;
      if (grad_x) scatter(grad_x + ((n * g.C + c) * g.T + t) * HW, b, gk * wk * q);
      if (grad_w) gpuAtomicAdd(grad_w + (c * g.T + t) * K + k, gk * q * s);
    }
    if (grad_query) grad_query[i] = gq;
  }
}

// defcor's gradient w.r.t. the offsets, one thread per (n, t, hw): offsets are shared by all groups.
template <typename scalar_t>
__global__ void defcor_backward_offset_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                              const scalar_t* __restrict__ off, const scalar_t* __restrict__ wt,
                                              scalar_t* __restrict__ grad_off, Geometry g, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, n = i / (HW * g.T);
    const int64_t tp = g.prev_frame(t);
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      acc_t gy = 0, gx = 0;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const acc_t gk = grad[g.score_index(n, grp, k, t, hw)];
        acc_t ay = 0, ax = 0;
        for (int64_t c = grp * Cg; c < (grp + 1) * Cg; ++c) {
          const scalar_t* video = x + (n * g.C + c) * g.T * HW;
          const acc_t wq = acc_t(wt[(c * g.T + t) * K + k]) * acc_t(video[tp * HW + hw]);
          const auto sg = math::interpolate_with_grad(b, video + t * HW, 1);
          ay += wq * sg.dy;
          ax += wq * sg.dx;
        }
        gy += gk * ay;
        gx += gk * ax;
      }
      grad_off[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(gy);
      grad_off[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(gx);
    }
  }
}

// defagg's gradient w.r.t. x: each output element scatters into its K taps.
template <typename scalar_t, typename acc_t>
__global__ void defagg_backward_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ off,
                                             const scalar_t* __restrict__ sc, acc_t* grad_x, Geometry g,
                                             int64_t total) {
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, c = (i / (HW * g.T)) % g.C, n = i / (HW * g.T * g.C);
    const int64_t grp = c / Cg;
    const acc_t go = grad[i];
    acc_t* plane = grad_x + (i - hw);
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      scatter(plane, b, go * acc_t(sc[g.score_index(n, grp, k, t, hw)]));
    }
  }
}

// defagg's gradients w.r.t. the scores and the offsets, one thread per (n, t, hw).
template <typename scalar_t>
__global__ void defagg_backward_scores_offset_kernel(const scalar_t* __restrict__ grad,
                                                     const scalar_t* __restrict__ x,
                                                     const scalar_t* __restrict__ off,
                                                     const scalar_t* __restrict__ sc, scalar_t* grad_off,
                                                     scalar_t* grad_sc, Geometry g, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t HW = g.plane(), K = g.taps(), Cg = g.group_channels();
  SIFA_KERNEL_LOOP(i, total) {
    const int64_t hw = i % HW, t = (i / HW) % g.T, n = i / (HW * g.T);
    for (int64_t k = 0; k < K; ++k) {
      const auto b = g.tap<acc_t>(off, n, k, t, hw);
      acc_t gy = 0, gx = 0;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        acc_t as = 0, ay = 0, ax = 0;
        for (int64_t c = grp * Cg; c < (grp + 1) * Cg; ++c) {
          const int64_t plane = ((n * g.C + c) * g.T + t) * HW;
          const acc_t go = grad[plane + hw];
          const auto sg = math::interpolate_with_grad(b, x + plane, 1);
          as += go * sg.value;
          ay += go * sg.dy;
          ax += go * sg.dx;
        }
        const acc_t a = sc[g.score_index(n, grp, k, t, hw)];
        if (grad_sc) grad_sc[g.score_index(n, grp, k, t, hw)] = static_cast<scalar_t>(as);
        gy += a * ay;
        gx += a * ax;
      }
      if (grad_off) {
        grad_off[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(gy);
        grad_off[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(gx);
      }
    }
  }
}

at::Tensor acc_zeros(const at::Tensor& like, at::IntArrayRef sizes) {
  const auto dtype = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros(sizes, like.options().dtype(dtype));
}

at::Tensor defcor_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = make_geometry(input, offset, weight, {weight.size(2), weight.size(3)}, stride, padding,
                               dilation, groups, false);
  const c10::cuda::CUDAGuard guard(input.device());
  auto corr = at::empty({g.N, groups * g.taps(), g.T, g.H, g.W}, input.options());
  const int64_t total = g.N * groups * g.T * g.plane();
  if (total == 0) return corr;
  const auto x = input.contiguous(), off = offset.contiguous(), wt = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "defcor_cuda", [&] {
    defcor_forward_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), corr.data_ptr<scalar_t>(), g,
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return corr;
}

at::Tensor defagg_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
                       at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups) {
  const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto x = input.contiguous(), off = offset.contiguous(), sc = scores.contiguous();
  auto out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "defagg_cuda", [&] {
    defagg_forward_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g,
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> defcor_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  const auto g = make_geometry(input, offset, weight, {weight.size(2), weight.size(3)}, stride, padding,
                               dilation, groups, false);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto gr = grad.contiguous(), x = input.contiguous(), off = offset.contiguous(), wt = weight.contiguous();
  auto grad_x = mask[0] ? acc_zeros(x, x.sizes()) : at::Tensor();
  auto grad_query = mask[0] ? acc_zeros(x, x.sizes()) : at::Tensor();
  auto grad_w = mask[2] ? acc_zeros(x, wt.sizes()) : at::Tensor();
  auto grad_off = mask[1] ? at::empty_like(off) : offset.new_empty({0});
  const int64_t per_channel = x.numel(), per_pixel = g.N * g.T * g.plane();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (per_channel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "defcor_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      if (mask[0] || mask[2]) {
        defcor_backward_input_kernel<scalar_t, acc_t><<<grid_for(per_channel), kThreads, 0, stream>>>(
            gr.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
            mask[0] ? grad_x.data_ptr<acc_t>() : nullptr, mask[0] ? grad_query.data_ptr<acc_t>() : nullptr,
            mask[2] ? grad_w.data_ptr<acc_t>() : nullptr, g, per_channel);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (mask[1]) {
        defcor_backward_offset_kernel<scalar_t><<<grid_for(per_pixel), kThreads, 0, stream>>>(
            gr.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
            grad_off.data_ptr<scalar_t>(), g, per_pixel);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  } else if (mask[1]) {
    grad_off.zero_();
  }
  at::Tensor grad_input = input.new_empty({0});
  if (mask[0]) {
    // frame t's query is frame prev(t): t−1, or 0 for t = 0
    grad_x.narrow(2, 0, 1).add_(grad_query.narrow(2, 0, 1));
    grad_x.narrow(2, 0, g.T - 1).add_(grad_query.narrow(2, 1, g.T - 1));
    grad_input = grad_x.to(input.scalar_type());
  }
  return {grad_input, grad_off, mask[2] ? grad_w.to(weight.scalar_type()) : weight.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> defagg_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, std::array<bool, 3> mask) {
  const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto gr = grad.contiguous(), x = input.contiguous(), off = offset.contiguous(), sc = scores.contiguous();
  auto grad_x = mask[0] ? acc_zeros(x, x.sizes()) : at::Tensor();
  auto grad_off = mask[1] ? at::zeros_like(off) : offset.new_empty({0});
  auto grad_sc = mask[2] ? at::zeros_like(sc) : scores.new_empty({0});
  const int64_t per_channel = x.numel(), per_pixel = g.N * g.T * g.plane();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (per_channel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "defagg_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      if (mask[0]) {
        defagg_backward_input_kernel<scalar_t, acc_t><<<grid_for(per_channel), kThreads, 0, stream>>>(
            gr.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), grad_x.data_ptr<acc_t>(),
            g, per_channel);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (mask[1] || mask[2]) {
        defagg_backward_scores_offset_kernel<scalar_t><<<grid_for(per_pixel), kThreads, 0, stream>>>(
            gr.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
            mask[1] ? grad_off.data_ptr<scalar_t>() : nullptr, mask[2] ? grad_sc.data_ptr<scalar_t>() : nullptr, g,
            per_pixel);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {mask[0] ? grad_x.to(input.scalar_type()) : input.new_empty({0}), grad_off, grad_sc};
}

}  // namespace

TORCH_LIBRARY_IMPL(sifa, CUDA, m) {
  m.impl("defcor", TORCH_FN(defcor_cuda));
  m.impl("defagg", TORCH_FN(defagg_cuda));
  m.impl("_defcor_backward", TORCH_FN(defcor_backward_cuda));
  m.impl("_defagg_backward", TORCH_FN(defagg_backward_cuda));
}

}  // namespace ops
}  // namespace sifa
