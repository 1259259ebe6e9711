// CPU kernels of the SIFA ops on the channels-last working layout (sifa.h): the inner loops run
// over contiguous channels and vectorise. Forward is parallel over (n, t, h) rows; backward over
// (n, t) frames, whose bilinear scatter stays inside the frame, so there are no atomics.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../sifa.h"

namespace sifa {
namespace ops {
namespace {

using math::Geometry;

// Per pixel and tap: the correlation score is the channel dot product of the weighted query with
// the sampled keys; the aggregation adds the sampled values times the score. Fused, the samples
// are interpolated once, kept in a row of scratch, and the score never leaves the registers.
template <typename scalar_t, bool kCorrelate, bool kAggregate>
void forward_kernel(const ForwardTensors& ts, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = ts.x.data_ptr<scalar_t>();
  const scalar_t* off = ts.offset.data_ptr<scalar_t>();
  const scalar_t* wt = kCorrelate ? ts.weight.data_ptr<scalar_t>() : nullptr;
  acc_t* sc = ts.scores.data_ptr<acc_t>();
  scalar_t* out = kAggregate ? ts.out.data_ptr<scalar_t>() : nullptr;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kAggregate ? C : 0), sample(kCorrelate && kAggregate ? C : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (g.T * g.H), t = (row / g.H) % g.T, h = row % g.H;
      const scalar_t* frame = x + (n * g.T + t) * HW * C;
      const scalar_t* query_row = x + ((n * g.T + g.prev_frame(t)) * HW + h * g.W) * C;
      for (int64_t w = 0; w < g.W; ++w) {
        const int64_t hw = h * g.W + w;
        const scalar_t* q = query_row + w * C;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          const scalar_t* wk = kCorrelate ? wt + (t * K + k) * C : nullptr;
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const int64_t c0 = grp * Cg, c1 = c0 + Cg;
            const int64_t si = g.score_index(n, grp, k, t, hw);
            if constexpr (kCorrelate) {
              acc_t score = 0;
#pragma omp simd reduction(+ : score)
              for (int64_t c = c0; c < c1; ++c) {
                const acc_t s = math::interpolate(b, frame + c, C);
                if constexpr (kAggregate) sample[c] = s;
                score += acc_t(wk[c]) * acc_t(q[c]) * s;
              }
              sc[si] = score;
              if constexpr (kAggregate) {
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) acc[c] += score * sample[c];
              }
            } else {
              const acc_t score = sc[si];
#pragma omp simd
              for (int64_t c = c0; c < c1; ++c) acc[c] += score * math::interpolate(b, frame + c, C);
            }
          }
        }
        if constexpr (kAggregate) {
          scalar_t* o = out + ((n * g.T + t) * HW + hw) * C;
          for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

// Per pixel, tap and group, one pass over the channels interpolates the samples with their
// derivatives and reduces everything that needs them: the aggregation's score gradient and both
// parts' offset gradients. The score gradient (aggregation's plus what arrives at the scores) then
// drives the second pass: the query and weight gradients and one bilinear scatter serving both parts.
template <typename scalar_t, bool kCorrelate, bool kAggregate>
void backward_kernel(const BackwardTensors& ts, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* go = kAggregate ? ts.grad_out.data_ptr<scalar_t>() : nullptr;
  const acc_t* gsc_in = ts.grad_scores.defined() ? ts.grad_scores.data_ptr<acc_t>() : nullptr;
  const scalar_t* x = ts.x.data_ptr<scalar_t>();
  const scalar_t* off = ts.offset.data_ptr<scalar_t>();
  const scalar_t* wt = kCorrelate ? ts.weight.data_ptr<scalar_t>() : nullptr;
  const acc_t* sc = kAggregate ? ts.scores.data_ptr<acc_t>() : nullptr;
  acc_t* gx = ts.grad_x.defined() ? ts.grad_x.data_ptr<acc_t>() : nullptr;
  acc_t* gq = ts.grad_query.defined() ? ts.grad_query.data_ptr<acc_t>() : nullptr;
  scalar_t* goff = ts.grad_offset.defined() ? ts.grad_offset.data_ptr<scalar_t>() : nullptr;
  acc_t* gw = ts.grad_weight.defined() ? ts.grad_weight.data_ptr<acc_t>() : nullptr;
  acc_t* gsc_out = ts.grad_scores_out.defined() ? ts.grad_scores_out.data_ptr<acc_t>() : nullptr;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  at::parallel_for(0, g.N * g.T, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sample(kCorrelate ? C : 0), coef(C);
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / g.T, t = nt % g.T;
      const scalar_t* frame = x + nt * HW * C;
      const scalar_t* query_frame = x + (n * g.T + g.prev_frame(t)) * HW * C;
      for (int64_t hw = 0; hw < HW; ++hw) {
        const scalar_t* q = query_frame + hw * C;
        const scalar_t* gop = kAggregate ? go + (nt * HW + hw) * C : nullptr;
        for (int64_t k = 0; k < K; ++k) {
          const auto b = g.tap<acc_t>(off, n, k, t, hw);
          const scalar_t* wk = kCorrelate ? wt + (t * K + k) * C : nullptr;
          acc_t off_y = 0, off_x = 0;  // offsets are shared by all groups: their gradients add up
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const int64_t c0 = grp * Cg, c1 = c0 + Cg;
            const int64_t si = g.score_index(n, grp, k, t, hw);
            const acc_t score = kAggregate ? acc_t(sc[si]) : acc_t(0);
            // math::ChannelTerms summed as five scalars: omp simd reduces scalars, not structs
            acc_t agg_s = 0, agg_y = 0, agg_x = 0, cor_y = 0, cor_x = 0;
#pragma omp simd reduction(+ : agg_s, agg_y, agg_x, cor_y, cor_x)
            for (int64_t c = c0; c < c1; ++c) {
              const auto sg = math::interpolate_with_grad(b, frame + c, C);
              const auto terms = math::channel_terms<kCorrelate, kAggregate>(
                  sg, kAggregate ? acc_t(gop[c]) : acc_t(0), kCorrelate ? acc_t(wk[c]) * acc_t(q[c]) : acc_t(0));
              agg_s += terms.agg_s;
              agg_y += terms.agg_y;
              agg_x += terms.agg_x;
              cor_y += terms.cor_y;
              cor_x += terms.cor_x;
              if constexpr (kCorrelate) sample[c] = sg.value;
            }
            // the gradient reaching the score: from the aggregation and from the score output
            const acc_t grad_score = kCorrelate ? agg_s + (gsc_in ? acc_t(gsc_in[si]) : acc_t(0)) : acc_t(0);
            if (gsc_out) gsc_out[si] = agg_s;
            off_y += score * agg_y + grad_score * cor_y;
            off_x += score * agg_x + grad_score * cor_x;
            if constexpr (kCorrelate) {
              if (gq) {
                acc_t* gq_px = gq + (nt * HW + hw) * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) gq_px[c] += grad_score * acc_t(wk[c]) * sample[c];
              }
              if (gw) {
                acc_t* gw_tk = gw + (nt * K + k) * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) gw_tk[c] += grad_score * acc_t(q[c]) * sample[c];
              }
            }
            if (gx) {
              // the value each corner receives, times its bilinear weight
#pragma omp simd
              for (int64_t c = c0; c < c1; ++c) {
                coef[c] = math::corner_value<kCorrelate, kAggregate>(
                    score, kAggregate ? acc_t(gop[c]) : acc_t(0), grad_score,
                    kCorrelate ? acc_t(wk[c]) * acc_t(q[c]) : acc_t(0));
              }
              acc_t* gx_frame = gx + nt * HW * C;
              for (int i = 0; i < 4; ++i) {
                if (b.weight[i] == acc_t(0)) continue;  // outside the image, or an integer position
                acc_t* dst = gx_frame + b.index[i] * C;
                const acc_t wi = b.weight[i];
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c) dst[c] += wi * coef[c];
              }
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

// The kernels have no reduced-precision path on the CPU; autocast runs the ops in float32.
struct CpuKernels {
  // frame t's query gradient goes to a buffer folded onto prev(t) afterwards: frames run in
  // parallel, and prev(t) is another thread's frame
  static constexpr bool kQueryGradientBuffer = true;
  static void forward(const ForwardTensors& ts, const Geometry& g, Parts parts) {
    AT_DISPATCH_FLOATING_TYPES(ts.x.scalar_type(), "sifa_forward_cpu", [&] {
      with_parts(parts, [&](auto cor, auto agg) { forward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value>(ts, g); });
    });
  }
  static void backward(const BackwardTensors& ts, const Geometry& g, Parts parts) {
    AT_DISPATCH_FLOATING_TYPES(ts.x.scalar_type(), "sifa_backward_cpu", [&] {
      with_parts(parts, [&](auto cor, auto agg) { backward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value>(ts, g); });
    });
  }
};

}  // namespace

SIFA_REGISTER_KERNELS(CPU, CpuKernels)

}  // namespace ops
}  // namespace sifa
