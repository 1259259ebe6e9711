// CUDA kernels of the SIFA ops on the channels-last working layout (sifa.h). One warp per pixel:
// its 32 lanes stride over the channels, so every feature read (query, the four bilinear corners,
// the output gradient) is a coalesced run of consecutive channels, and the channel dot products are
// reduced with warp shuffles. The pixel's K taps (corners, weights, their derivatives) are computed
// once per warp into shared memory. Math in float (double for double) for every storage dtype; the
// only atomics are the bilinear scatter of the input gradient (and the frozen weight's gradient,
// when asked for), into float (double) accumulators cast at the end.
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

using math::Bilinear;
using math::Geometry;

constexpr int kWarp = 32;
constexpr int kMaxWarpsPerBlock = 8;
constexpr int64_t kSharedLimit = 48 * 1024;  // the default dynamic shared memory per block

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int lane_mask = kWarp / 2; lane_mask > 0; lane_mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
  return v;
}

// A warp's slice of shared memory: the pixel's K taps and its G·K scores.
template <typename acc_t>
struct WarpShared {
  Bilinear<acc_t>* taps;
  acc_t* scores;

  static __host__ __device__ int64_t bytes(const Geometry& g) {
    return g.taps() * int64_t(sizeof(Bilinear<acc_t>)) + g.groups * g.taps() * int64_t(sizeof(acc_t));
  }
};

template <typename acc_t>
__device__ __forceinline__ WarpShared<acc_t> warp_shared(unsigned char* smem, const Geometry& g) {
  const int warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  WarpShared<acc_t> s;
  s.taps = reinterpret_cast<Bilinear<acc_t>*>(smem) + warp * g.taps();
  s.scores = reinterpret_cast<acc_t*>(reinterpret_cast<Bilinear<acc_t>*>(smem) + warps * g.taps()) +
             warp * g.groups * g.taps();
  return s;
}

// The pixel p = (n·T + t)·H·W + hw of a warp; its lanes fill the shared taps.
struct Pixel {
  int64_t n, t, hw;
};

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ Pixel load_pixel(int64_t p, const Geometry& g, const scalar_t* off,
                                            const WarpShared<acc_t>& shared, int lane) {
  const Pixel px{p / (g.T * g.plane()), (p / g.plane()) % g.T, p % g.plane()};
  for (int64_t k = lane; k < g.taps(); k += kWarp) shared.taps[k] = g.tap<acc_t>(off, px.n, k, px.t, px.hw);
  return px;
}

// Grid-stride loop over pixels (n, t, hw), one per warp; `lane` is the thread's channel offset.
#define SIFA_WARP_PIXEL_LOOP(p, pixels)                                                              \
  for (int64_t p = blockIdx.x * int64_t(blockDim.x / kWarp) + threadIdx.x / kWarp; p < (pixels); \
       p += int64_t(gridDim.x) * (blockDim.x / kWarp))

template <typename scalar_t, bool kCorrelate, bool kAggregate>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                               const scalar_t* __restrict__ wt, scalar_t* __restrict__ sc,
                               scalar_t* __restrict__ out, Geometry g, int64_t pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t>(smem, g);
  const int lane = threadIdx.x % kWarp;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  SIFA_WARP_PIXEL_LOOP(p, pixels) {
    const auto [n, t, hw] = load_pixel(p, g, off, shared, lane);
    const scalar_t* frame = x + (n * g.T + t) * HW * C;
    if constexpr (!kCorrelate) {
      for (int64_t j = lane; j < g.groups * K; j += kWarp)
        shared.scores[j] = sc[g.score_index(n, j / K, j % K, t, hw)];
    }
    __syncwarp();
    if constexpr (kCorrelate) {
      const scalar_t* q = x + ((n * g.T + g.prev_frame(t)) * HW + hw) * C;
      for (int64_t k = 0; k < K; ++k) {
        const Bilinear<acc_t>& b = shared.taps[k];
        const scalar_t* wk = wt + (t * K + k) * C;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          acc_t partial = 0;
          for (int64_t c = grp * Cg + lane; c < (grp + 1) * Cg; c += kWarp)
            partial += acc_t(wk[c]) * acc_t(q[c]) * math::interpolate(b, frame + c, C);
          const acc_t score = warp_sum(partial);
          if (lane == 0) {
            sc[g.score_index(n, grp, k, t, hw)] = static_cast<scalar_t>(score);
            shared.scores[grp * K + k] = score;
          }
        }
      }
      __syncwarp();
    }
    if constexpr (kAggregate) {
      // the corners were just read for the scores: this second sweep hits L1/L2
      scalar_t* o = out + p * C;
      for (int64_t c = lane; c < C; c += kWarp) {
        const acc_t* scores = shared.scores + (c / Cg) * K;
        acc_t acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += scores[k] * math::interpolate(shared.taps[k], frame + c, C);
        o[c] = static_cast<scalar_t>(acc);
      }
    }
    __syncwarp();  // the shared taps are rewritten for the next pixel
  }
}

// Per pixel, tap and group: one sweep over the channels reduces the aggregation's score gradient
// and both parts' offset gradients; the score gradient (aggregation's plus what arrives at the
// scores) then drives a second sweep with the query and weight gradients and one bilinear scatter
// serving both parts.
template <typename scalar_t, bool kCorrelate, bool kAggregate>
__global__ void backward_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ gsc_in,
                                const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                const scalar_t* __restrict__ wt, const scalar_t* __restrict__ sc,
                                at::acc_type<scalar_t, true>* gx, at::acc_type<scalar_t, true>* __restrict__ gq,
                                scalar_t* __restrict__ goff, at::acc_type<scalar_t, true>* gw,
                                scalar_t* __restrict__ gsc_out, Geometry g, int64_t pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t>(smem, g);
  const int lane = threadIdx.x % kWarp;
  const int64_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  SIFA_WARP_PIXEL_LOOP(p, pixels) {
    const auto [n, t, hw] = load_pixel(p, g, off, shared, lane);
    __syncwarp();
    const int64_t nt = n * g.T + t;
    const scalar_t* frame = x + nt * HW * C;
    const scalar_t* q = x + ((n * g.T + g.prev_frame(t)) * HW + hw) * C;
    const scalar_t* gop = kAggregate ? go + p * C : nullptr;
    for (int64_t k = 0; k < K; ++k) {
      const Bilinear<acc_t>& b = shared.taps[k];
      const scalar_t* wk = kCorrelate ? wt + (t * K + k) * C : nullptr;
      acc_t off_y = 0, off_x = 0;  // offsets are shared by all groups: their gradients add up
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t c0 = grp * Cg, c1 = c0 + Cg;
        const int64_t si = g.score_index(n, grp, k, t, hw);
        const acc_t score = kAggregate ? acc_t(sc[si]) : acc_t(0);
        math::ChannelTerms<acc_t> sums{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (int64_t c = c0 + lane; c < c1; c += kWarp) {
          sums += math::channel_terms<kCorrelate, kAggregate>(
              math::interpolate_with_grad(b, frame + c, C), kAggregate ? acc_t(gop[c]) : acc_t(0),
              kCorrelate ? acc_t(wk[c]) * acc_t(q[c]) : acc_t(0));
        }
        if constexpr (kAggregate) {  // every lane gets the warp's totals
          sums.agg_s = warp_sum(sums.agg_s);
          sums.agg_y = warp_sum(sums.agg_y);
          sums.agg_x = warp_sum(sums.agg_x);
        }
        if constexpr (kCorrelate) {
          sums.cor_y = warp_sum(sums.cor_y);
          sums.cor_x = warp_sum(sums.cor_x);
        }
        // the gradient reaching the score: from the aggregation and from the score output
        const acc_t grad_score = kCorrelate ? sums.agg_s + (gsc_in ? acc_t(gsc_in[si]) : acc_t(0)) : acc_t(0);
        if (gsc_out && lane == 0) gsc_out[si] = static_cast<scalar_t>(sums.agg_s);
        off_y += score * sums.agg_y + grad_score * sums.cor_y;
        off_x += score * sums.agg_x + grad_score * sums.cor_x;
        if (gx || gw) {
          acc_t* gx_frame = gx ? gx + nt * HW * C : nullptr;
          for (int64_t c = c0 + lane; c < c1; c += kWarp) {
            const acc_t qc = kCorrelate ? acc_t(q[c]) : acc_t(0);
            const acc_t wc = kCorrelate ? acc_t(wk[c]) : acc_t(0);
            if constexpr (kCorrelate) {
              const acc_t s = math::interpolate(b, frame + c, C);
              if (gq) gq[p * C + c] += grad_score * wc * s;  // this warp owns the pixel: no atomics
              if (gw) gpuAtomicAdd(gw + (nt * K + k) * C + c, grad_score * qc * s);
            }
            if (gx_frame) {
              const acc_t v = math::corner_value<kCorrelate, kAggregate>(
                  score, kAggregate ? acc_t(gop[c]) : acc_t(0), grad_score, wc * qc);
#pragma unroll
              for (int i = 0; i < 4; ++i)
                if (b.weight[i] != acc_t(0)) gpuAtomicAdd(gx_frame + b.index[i] * C + c, b.weight[i] * v);
            }
          }
        }
      }
      if (goff && lane == 0) {
        goff[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(off_y);
        goff[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(off_x);
      }
    }
    __syncwarp();  // the shared taps are rewritten for the next pixel
  }
}

// Launch configuration of the pixel kernels: as many warps per block (up to 8) as the shared
// memory allows, each needing its pixel's taps and scores; the grid-stride loop covers the rest.
struct LaunchConfig {
  unsigned blocks;
  int threads;
  int64_t shared_bytes;
};

template <typename acc_t>
LaunchConfig launch_config(const Geometry& g, int64_t pixels) {
  const int64_t per_warp = WarpShared<acc_t>::bytes(g);
  TORCH_CHECK(per_warp <= kSharedLimit, "sifa (CUDA): a ", g.kh, "×", g.kw, " kernel with ", g.groups,
              " groups needs ", per_warp, " bytes of shared memory per warp, over the ", kSharedLimit, " available");
  const int warps = static_cast<int>(std::min<int64_t>(kMaxWarpsPerBlock, kSharedLimit / per_warp));
  const auto blocks = std::min<int64_t>((pixels + warps - 1) / warps, int64_t(1) << 20);
  return {static_cast<unsigned>(blocks), warps * kWarp, warps * per_warp};
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

struct CudaKernels {
  static void forward(const ForwardTensors& ts, const Geometry& g, Parts parts) {
    const c10::cuda::CUDAGuard guard(ts.x.device());
    const int64_t pixels = g.N * g.T * g.plane();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts.x.scalar_type(), "sifa_forward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      const auto cfg = launch_config<acc_t>(g, pixels);
      with_parts(parts, [&](auto cor, auto agg) {
        forward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value>
            <<<cfg.blocks, cfg.threads, cfg.shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
                ts.x.data_ptr<scalar_t>(), ts.offset.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(ts.weight),
                ts.scores.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(ts.out), g, pixels);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward(const BackwardTensors& ts, const Geometry& g, Parts parts) {
    const c10::cuda::CUDAGuard guard(ts.x.device());
    const int64_t pixels = g.N * g.T * g.plane();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts.x.scalar_type(), "sifa_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      const auto cfg = launch_config<acc_t>(g, pixels);
      with_parts(parts, [&](auto cor, auto agg) {
        backward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value>
            <<<cfg.blocks, cfg.threads, cfg.shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
                ptr_or_null<scalar_t>(ts.grad_out), ptr_or_null<scalar_t>(ts.grad_scores),
                ts.x.data_ptr<scalar_t>(), ts.offset.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(ts.weight),
                ptr_or_null<scalar_t>(ts.scores), ptr_or_null<acc_t>(ts.grad_x), ptr_or_null<acc_t>(ts.grad_query),
                ptr_or_null<scalar_t>(ts.grad_offset), ptr_or_null<acc_t>(ts.grad_weight),
                ptr_or_null<scalar_t>(ts.grad_scores_out), g, pixels);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

SIFA_REGISTER_KERNELS(CUDA, CudaKernels)

}  // namespace ops
}  // namespace sifa
