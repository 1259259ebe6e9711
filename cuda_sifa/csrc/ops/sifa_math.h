// Per-sample math of the SIFA operator, shared by the CPU and CUDA kernels so that the CPU
// tests exercise the very index arithmetic and bilinear weights the GPU runs (docs/design.md §2, §3).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SIFA_HOST_DEVICE __host__ __device__ __forceinline__
#define SIFA_UNROLL _Pragma("unroll")
#else
#define SIFA_HOST_DEVICE inline
#define SIFA_UNROLL _Pragma("GCC unroll 4")
#endif

namespace sifa {
namespace math {

template <typename acc_t>
SIFA_HOST_DEVICE acc_t floor_of(acc_t v) {
#ifdef __CUDA_ARCH__
  return floor(v);
#else
  return std::floor(v);
#endif
}

// The four corners of a bilinear sample: indices into an H×W plane (y·W + x), interpolation
// weights and their derivatives w.r.t. the sample's y and x. Corners outside the image (and all
// four when the sample lies outside (−1, H)×(−1, W), or at a NaN or infinite position) have index
// 0 and zero weights, so callers may read and scatter through them without branching.
// index_t: int64_t, or int32_t where every index of the call fits (the CUDA kernels' 32-bit path).
template <typename acc_t, typename index_t = int64_t>
struct Bilinear {
  index_t index[4];
  acc_t weight[4];
  acc_t dweight_dy[4];
  acc_t dweight_dx[4];
};

template <typename acc_t, typename index_t>
SIFA_HOST_DEVICE Bilinear<acc_t, index_t> bilinear(acc_t py, acc_t px, index_t H, index_t W) {
  Bilinear<acc_t, index_t> b;
SIFA_UNROLL
  for (int i = 0; i < 4; ++i) {
    b.index[i] = 0;
    b.weight[i] = b.dweight_dy[i] = b.dweight_dx[i] = acc_t(0);
  }
  // written so that NaN fails it: a NaN position samples nothing (and is never converted to an index)
  if (!(py > acc_t(-1) && px > acc_t(-1) && py < acc_t(H) && px < acc_t(W))) return b;
  const acc_t fy = floor_of(py), fx = floor_of(px);
  const index_t y0 = static_cast<index_t>(fy), x0 = static_cast<index_t>(fx);
  const acc_t ly = py - fy, lx = px - fx, hy = acc_t(1) - ly, hx = acc_t(1) - lx;
  // corner order: (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
SIFA_UNROLL
  for (int i = 0; i < 4; ++i) {
    const index_t y = y0 + (i >> 1), x = x0 + (i & 1);
    if (y >= 0 && y < H && x >= 0 && x < W) {
      b.index[i] = y * W + x;
      b.weight[i] = w[i];
      b.dweight_dy[i] = dy[i];
      b.dweight_dx[i] = dx[i];
    }
  }
  return b;
}

// The sample from corner elements base[index·stride] (stride: the layout's distance between pixels).
template <typename acc_t, typename index_t, typename scalar_t>
SIFA_HOST_DEVICE acc_t interpolate(const Bilinear<acc_t, index_t>& b, const scalar_t* base, index_t stride) {
  return b.weight[0] * acc_t(base[b.index[0] * stride]) + b.weight[1] * acc_t(base[b.index[1] * stride]) +
         b.weight[2] * acc_t(base[b.index[2] * stride]) + b.weight[3] * acc_t(base[b.index[3] * stride]);
}

// The sample and its derivatives along y and x.
template <typename acc_t>
struct SampleGrad {
  acc_t value, dy, dx;
};

template <typename acc_t, typename index_t, typename scalar_t>
SIFA_HOST_DEVICE SampleGrad<acc_t> interpolate_with_grad(const Bilinear<acc_t, index_t>& b, const scalar_t* base,
                                                         index_t stride) {
  SampleGrad<acc_t> r{acc_t(0), acc_t(0), acc_t(0)};
  SIFA_UNROLL
  for (int i = 0; i < 4; ++i) {
    const acc_t v = base[b.index[i] * stride];
    r.value += b.weight[i] * v;
    r.dy += b.dweight_dy[i] * v;
    r.dx += b.dweight_dx[i] * v;
  }
  return r;
}

// Backward of one tap, per channel: the terms the first sweep reduces over the channels — the
// aggregation's Σ grad_out·(S, ∂S/∂y, ∂S/∂x) and the correlation's Σ weight·query·(∂S/∂y, ∂S/∂x) —
// and what the channel then sends to the tap's bilinear corners (before their weights): the
// aggregation's score·grad_out plus the correlation's grad_score·weight·query.
template <typename acc_t>
struct ChannelTerms {
  acc_t agg_s, agg_y, agg_x, cor_y, cor_x;

  SIFA_HOST_DEVICE ChannelTerms& operator+=(const ChannelTerms& o) {
    agg_s += o.agg_s;
    agg_y += o.agg_y;
    agg_x += o.agg_x;
    cor_y += o.cor_y;
    cor_x += o.cor_x;
    return *this;
  }
};

template <bool kCorrelate, bool kAggregate, typename acc_t>
SIFA_HOST_DEVICE ChannelTerms<acc_t> channel_terms(const SampleGrad<acc_t>& sg, acc_t grad_out, acc_t weight_query) {
  ChannelTerms<acc_t> r{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if constexpr (kAggregate) {
    r.agg_s = grad_out * sg.value;
    r.agg_y = grad_out * sg.dy;
    r.agg_x = grad_out * sg.dx;
  }
  if constexpr (kCorrelate) {
    r.cor_y = weight_query * sg.dy;
    r.cor_x = weight_query * sg.dx;
  }
  return r;
}

template <bool kCorrelate, bool kAggregate, typename acc_t>
SIFA_HOST_DEVICE acc_t corner_value(acc_t score, acc_t grad_out, acc_t grad_score, acc_t weight_query) {
  acc_t v = 0;
  if constexpr (kAggregate) v += score * grad_out;
  if constexpr (kCorrelate) v += grad_score * weight_query;
  return v;
}

// Shape and hyper-parameters of one call, with the index arithmetic of the NCTHW tensors
// that cross the op boundary (offsets N×2K×T×H×W, scores N×G·K×T×H×W, weight C×T×K), in index_t:
// int64_t (Geometry), or int32_t where every tensor of the call has fewer than 2^31 elements (the
// CUDA kernels' 32-bit path, as<int32_t>()).
// The offsets (and their gradient, laid out alike) are read through their strides, so that the
// channels-last offsets of a channels_last_3d network need no copy: off_n, off_c, off_t are the
// strides of sample, channel and frame, off_p that of the pixel hw = h·W + w (sifa.h,
// offset_layout, takes only layouts where one pixel stride covers the H×W plane).
template <typename index_t>
struct GeometryOf {
  index_t N, C, T, H, W;
  index_t kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  index_t off_n, off_c, off_t, off_p;

  template <typename other_t>
  GeometryOf<other_t> as() const {
    const auto i = [](index_t v) { return static_cast<other_t>(v); };
    return {i(N),     i(C),     i(T),     i(H),     i(W),     i(kh),    i(kw),    i(stride_h), i(stride_w),
            i(pad_h), i(pad_w), i(dil_h), i(dil_w), i(groups), i(off_n), i(off_c), i(off_t),   i(off_p)};
  }

  SIFA_HOST_DEVICE index_t taps() const { return kh * kw; }
  SIFA_HOST_DEVICE index_t plane() const { return H * W; }
  SIFA_HOST_DEVICE index_t group_channels() const { return C / groups; }
  // the query frame of frame t: t−1, and frame 0 correlates with itself
  SIFA_HOST_DEVICE index_t prev_frame(index_t t) const { return t > 0 ? t - 1 : 0; }

  SIFA_HOST_DEVICE index_t offset_index(index_t n, index_t k, index_t axis, index_t t, index_t hw) const {
    return n * off_n + (2 * k + axis) * off_c + t * off_t + hw * off_p;
  }
  SIFA_HOST_DEVICE index_t score_index(index_t n, index_t g, index_t k, index_t t, index_t hw) const {
    return (((n * groups + g) * taps() + k) * T + t) * plane() + hw;
  }

  // Bilinear corners of tap k (row k / kw, column k % kw) of pixel (h, w) displaced by the offset.
  template <typename acc_t>
  SIFA_HOST_DEVICE Bilinear<acc_t, index_t> sample(index_t h, index_t w, index_t k, acc_t off_y, acc_t off_x) const {
    const acc_t py = static_cast<acc_t>(h * stride_h - pad_h + (k / kw) * dil_h) + off_y;
    const acc_t px = static_cast<acc_t>(w * stride_w - pad_w + (k % kw) * dil_w) + off_x;
    return bilinear<acc_t>(py, px, H, W);
  }

  // Bilinear corners of tap k of pixel (h, w) in frame t of sample n, reading its offsets.
  template <typename acc_t, typename scalar_t>
  SIFA_HOST_DEVICE Bilinear<acc_t, index_t> tap(const scalar_t* offset, index_t n, index_t k, index_t t, index_t h,
                                                index_t w) const {
    const index_t hw = h * W + w;
    return sample<acc_t>(h, w, k, acc_t(offset[offset_index(n, k, 0, t, hw)]),
                         acc_t(offset[offset_index(n, k, 1, t, hw)]));
  }
};

using Geometry = GeometryOf<int64_t>;

}  // namespace math
}  // namespace sifa
