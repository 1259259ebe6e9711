// CPU kernels of the SIFA ops. Features are worked on channels-last (N×T×H×W×C) so that the inner
// loops run over contiguous channels and vectorise; forward is parallel over (n, t, h) rows,
// backward over (n, t) frames, whose bilinear scatter stays inside the frame, so no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../sifa.h"

namespace sifa {
namespace ops {
namespace {

using math::Bilinear;
using math::Geometry;

at::Tensor channels_last(const at::Tensor& x) { return x.permute({0, 2, 3, 4, 1}).contiguous(); }
at::Tensor from_channels_last(const at::Tensor& x) { return x.permute({0, 4, 1, 2, 3}).contiguous(); }

template <typename scalar_t>
void defcor_forward(const at::Tensor& x_cl, const at::Tensor& offset, const at::Tensor& weight_tkc,
                    at::Tensor& corr, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = x_cl.data_ptr<scalar_t>();
  const scalar_t* off = offset.data_ptr<scalar_t>();
  const scalar_t* wt = weight_tkc.data_ptr<scalar_t>();
  scalar_t* out = corr.data_ptr<scalar_t>();
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.T * g.H), t = (row / g.H) % g.T, h = row % g.H;
      const scalar_t* frame = x + (n * g.T + t) * HW * C;
      const scalar_t* query_row = x + ((n * g.T + g.prev_frame(t)) * HW + h * g.W) * C;
      for (int64_t w = 0; w < g.W; ++w) {
        const int64_t hw = h * g.W + w;
        const scalar_t* q = query_row + w * C;
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          const scalar_t* wk = wt + (t * K + k) * C;
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t c = grp * Cg; c < (grp + 1) * Cg; ++c) {
              acc += acc_t(wk[c]) * acc_t(q[c]) * math::interpolate(b, frame + c, C);
            }
            out[g.score_index(n, grp, k, t, hw)] = static_cast<scalar_t>(acc);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void defagg_forward(const at::Tensor& x_cl, const at::Tensor& offset, const at::Tensor& scores,
                    at::Tensor& out_cl, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = x_cl.data_ptr<scalar_t>();
  const scalar_t* off = offset.data_ptr<scalar_t>();
  const scalar_t* sc = scores.data_ptr<scalar_t>();
  scalar_t* out = out_cl.data_ptr<scalar_t>();
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.T * g.H), t = (row / g.H) % g.T, h = row % g.H;
      const scalar_t* frame = x + (n * g.T + t) * HW * C;
      for (int64_t w = 0; w < g.W; ++w) {
        const int64_t hw = h * g.W + w;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const acc_t a = sc[g.score_index(n, grp, k, t, hw)];
#pragma omp simd
            for (int64_t c = grp * Cg; c < (grp + 1) * Cg; ++c)
              acc[c] += a * math::interpolate(b, frame + c, C);
          }
        }
        scalar_t* o = out + ((n * g.T + t) * HW + hw) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

// Backward of defcor. grad_query (N×T×H×W×C) collects ∂/∂x[prev(t)] per frame t, so that each
// frame's work writes only its own memory; the caller folds it onto the previous frame.
template <typename scalar_t>
void defcor_backward(const at::Tensor& grad, const at::Tensor& x_cl, const at::Tensor& offset,
                     const at::Tensor& weight_tkc, at::Tensor& grad_x_cl, at::Tensor& grad_query,
                     at::Tensor& grad_offset, at::Tensor& grad_weight_ntkc, const Geometry& g,
                     std::array<bool, 3> mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gr = grad.data_ptr<scalar_t>();
  const scalar_t* x = x_cl.data_ptr<scalar_t>();
  const scalar_t* off = offset.data_ptr<scalar_t>();
  const scalar_t* wt = weight_tkc.data_ptr<scalar_t>();
  acc_t* gx = mask[0] ? grad_x_cl.data_ptr<acc_t>() : nullptr;
  acc_t* gq = mask[0] ? grad_query.data_ptr<acc_t>() : nullptr;
  scalar_t* goff = mask[1] ? grad_offset.data_ptr<scalar_t>() : nullptr;
  acc_t* gw = mask[2] ? grad_weight_ntkc.data_ptr<acc_t>() : nullptr;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(C);
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / g.T, t = nt % g.T;
      const scalar_t* frame = x + nt * HW * C;
      const scalar_t* query_frame = x + (n * g.T + g.prev_frame(t)) * HW * C;
      for (int64_t hw = 0; hw < HW; ++hw) {
        const scalar_t* q = query_frame + hw * C;
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          const scalar_t* wk = wt + (t * K + k) * C;
          acc_t off_y = 0, off_x = 0;  // offsets are shared by all groups: their gradients add up
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const acc_t gk = gr[g.score_index(n, grp, k, t, hw)];
            const int64_t c0 = grp * Cg, c1 = c0 + Cg;
            if (gx) {
              acc_t* gx_frame = gx + nt * HW * C;
              for (int i = 0; i < 4; ++i) {
                if (b.weight[i] == acc_t(0)) continue;  // outside the image, or an integer position
                acc_t* dst = gx_frame + b.index[i] * C;
                const acc_t a = gk * b.weight[i];
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) dst[c] += a * acc_t(wk[c]) * acc_t(q[c]);
              }
            }
            // one pass over the corners serves the query and offset gradients (without an input
            // gradient the query's goes to a scratch row: a branch here would stop vectorisation)
            acc_t* gq_px = gx ? gq + (nt * HW + hw) * C : scratch.data();
            acc_t ay = 0, ax = 0;
#pragma omp simd reduction(+ : ay, ax)
            for (int64_t c = c0; c < c1; ++c) {
              const auto sg = math::interpolate_with_grad(b, frame + c, C);
              const acc_t wc = wk[c], qc = q[c];
              gq_px[c] += gk * wc * sg.value;
              ay += wc * qc * sg.dy;
              ax += wc * qc * sg.dx;
            }
            if (gw) {
              acc_t* gw_tk = gw + (nt * K + k) * C;
#pragma omp simd
              for (int64_t c = c0; c < c1; ++c) gw_tk[c] += gk * acc_t(q[c]) * math::interpolate(b, frame + c, C);
            }
            off_y += gk * ay;
            off_x += gk * ax;
          }
          if (goff) {
            goff[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(off_y);
            goff[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(off_x);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void defagg_backward(const at::Tensor& grad_cl, const at::Tensor& x_cl, const at::Tensor& offset,
                     const at::Tensor& scores, at::Tensor& grad_x_cl, at::Tensor& grad_offset,
                     at::Tensor& grad_scores, const Geometry& g, std::array<bool, 3> mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gr = grad_cl.data_ptr<scalar_t>();
  const scalar_t* x = x_cl.data_ptr<scalar_t>();
  const scalar_t* off = offset.data_ptr<scalar_t>();
  const scalar_t* sc = scores.data_ptr<scalar_t>();
  acc_t* gx = mask[0] ? grad_x_cl.data_ptr<acc_t>() : nullptr;
  scalar_t* goff = mask[1] ? grad_offset.data_ptr<scalar_t>() : nullptr;
  scalar_t* gsc = mask[2] ? grad_scores.data_ptr<scalar_t>() : nullptr;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / g.T, t = nt % g.T;
      const scalar_t* frame = x + nt * HW * C;
      for (int64_t hw = 0; hw < HW; ++hw) {
        const scalar_t* go = gr + (nt * HW + hw) * C;
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          acc_t off_y = 0, off_x = 0;  // offsets are shared by all groups: their gradients add up
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const int64_t c0 = grp * Cg, c1 = c0 + Cg;
            const acc_t a = sc[g.score_index(n, grp, k, t, hw)];
            if (gx) {
              acc_t* gx_frame = gx + nt * HW * C;
              for (int i = 0; i < 4; ++i) {
                if (b.weight[i] == acc_t(0)) continue;  // outside the image, or an integer position
                acc_t* dst = gx_frame + b.index[i] * C;
                const acc_t ai = a * b.weight[i];
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) dst[c] += ai * acc_t(go[c]);
              }
            }
            if (goff || gsc) {
              acc_t as = 0, ay = 0, ax = 0;
#pragma omp simd reduction(+ : as, ay, ax)
              for (int64_t c = c0; c < c1; ++c) {
                const auto sg = math::interpolate_with_grad(b, frame + c, C);
                const acc_t gc = go[c];
                as += gc * sg.value;
                ay += gc * sg.dy;
                ax += gc * sg.dx;
              }
              if (gsc) gsc[g.score_index(n, grp, k, t, hw)] = static_cast<scalar_t>(as);
              off_y += a * ay;
              off_x += a * ax;
            }
          }
          if (goff) {
            goff[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(off_y);
            goff[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(off_x);
          }
        }
      }
    }
  });
}

// weight C×T×kh×kw -> T×K×C, the layout the channel loops read contiguously
at::Tensor weight_tkc(const at::Tensor& weight) {
  return weight.reshape({weight.size(0), weight.size(1), -1}).permute({1, 2, 0}).contiguous();
}

at::Tensor defcor_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = make_geometry(input, offset, weight, {weight.size(2), weight.size(3)}, stride, padding,
                               dilation, groups, false);
  auto corr = at::empty({g.N, groups * g.taps(), g.T, g.H, g.W}, input.options());
  const auto x_cl = channels_last(input);
  const auto off = offset.contiguous();
  const auto wt = weight_tkc(weight);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "defcor_cpu", [&] {
    defcor_forward<scalar_t>(x_cl, off, wt, corr, g);
  });
  return corr;
}

at::Tensor defagg_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups) {
  const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
  const auto x_cl = channels_last(input);
  auto out_cl = at::empty_like(x_cl);
  const auto off = offset.contiguous();
  const auto sc = scores.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "defagg_cpu", [&] {
    defagg_forward<scalar_t>(x_cl, off, sc, out_cl, g);
  });
  return from_channels_last(out_cl);
}

at::Tensor acc_buffer(const at::Tensor& like, at::IntArrayRef sizes, bool needed) {
  const auto dtype = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return needed ? at::zeros(sizes, like.options().dtype(dtype)) : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> defcor_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  const auto g = make_geometry(input, offset, weight, {weight.size(2), weight.size(3)}, stride, padding,
                               dilation, groups, false);
  const auto x_cl = channels_last(input);
  auto grad_x_cl = acc_buffer(input, x_cl.sizes(), mask[0]);
  auto grad_query = acc_buffer(input, x_cl.sizes(), mask[0]);
  auto grad_offset = mask[1] ? at::empty_like(offset, at::MemoryFormat::Contiguous) : at::Tensor();
  auto grad_weight = acc_buffer(input, {g.N, g.T, g.taps(), g.C}, mask[2]);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "defcor_backward_cpu", [&] {
    defcor_backward<scalar_t>(grad.contiguous(), x_cl, offset.contiguous(), weight_tkc(weight), grad_x_cl,
                              grad_query, grad_offset, grad_weight, g, mask);
  });
  at::Tensor grad_input = input.new_empty({0}), grad_w = weight.new_empty({0});
  if (mask[0]) {
    // frame t's query is frame prev(t): t−1, or 0 for t = 0
    grad_x_cl.narrow(1, 0, 1).add_(grad_query.narrow(1, 0, 1));
    grad_x_cl.narrow(1, 0, g.T - 1).add_(grad_query.narrow(1, 1, g.T - 1));
    grad_input = from_channels_last(grad_x_cl).to(input.scalar_type());
  }
  if (mask[2]) {
    // N×T×K×C summed over the batch -> C×T×kh×kw
    grad_w = grad_weight.sum(0).permute({2, 0, 1}).reshape(weight.sizes()).to(weight.scalar_type()).contiguous();
  }
  return {grad_input, mask[1] ? grad_offset : offset.new_empty({0}), grad_w};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> defagg_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, std::array<bool, 3> mask) {
  const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
  const auto x_cl = channels_last(input);
  auto grad_x_cl = acc_buffer(input, x_cl.sizes(), mask[0]);
  auto grad_offset = mask[1] ? at::empty_like(offset, at::MemoryFormat::Contiguous) : at::Tensor();
  auto grad_scores = mask[2] ? at::empty_like(scores, at::MemoryFormat::Contiguous) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "defagg_backward_cpu", [&] {
    defagg_backward<scalar_t>(channels_last(grad), x_cl, offset.contiguous(), scores.contiguous(), grad_x_cl,
                              grad_offset, grad_scores, g, mask);
  });
  return {mask[0] ? from_channels_last(grad_x_cl).to(input.scalar_type()) : input.new_empty({0}),
          mask[1] ? grad_offset : offset.new_empty({0}), mask[2] ? grad_scores : scores.new_empty({0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(sifa, CPU, m) {
  m.impl("defcor", TORCH_FN(defcor_cpu));
  m.impl("defagg", TORCH_FN(defagg_cpu));
  m.impl("_defcor_backward", TORCH_FN(defcor_backward_cpu));
  m.impl("_defagg_backward", TORCH_FN(defagg_backward_cpu));
}

}  // namespace ops
}  // namespace sifa
