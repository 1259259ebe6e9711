// CUDA kernels of the SIFA ops on the channels-last working layout (sifa.h). One warp per pixel
// (the slice kernels: W warps per pixel at the wide layers): its lanes cover the channels, so every
// feature read (query, the four bilinear corners, the output gradient) is a coalesced run of
// consecutive channels, and channel dot products are reduced with warp shuffles (and, over a
// pixel's W warps, through shared memory in warp order). The pixel's K taps (corners, weights,
// their derivatives) are computed once per warp into shared memory. Math in float (double for
// double) for every storage dtype; scores in that type too.
//
// Two kernel families:
// - the slice kernels, for the fused op with one group and C = 32·S·W/P = 64, 96, 128, 192, 256,
//   384, 512, 768, 1024 or 1536 — every SIFA width of SIFA-Net (128–512) and SIFA-Swin-S/B/L
//   (96–1536): W warps per pixel, S channels per lane (ForwardShapes, BackwardShapes: the forward
//   two pixels per warp, 16 lanes each, up to C = 128, one warp up to C = 512, then 12·2, 16·2,
//   16·3, for half and bfloat16 (ForwardShapes2Byte) four pixels per warp, 8 lanes each, up to
//   C = 128 and two, 16 lanes each, at 192 and 256; the backward one warp up to C = 256, then 6·2,
//   8·2, 8·3, 8·4, 8·6). Each lane keeps its S contiguous channels in registers, reads them with
//   vector loads, and sweeps the taps once (the
//   backward's loops unrolled for 3×3 taps while the registers allow) reading every corner without
//   a branch — forward: sample, score, accumulate; backward, in two
//   passes with no global float atomics in the input and offset gradients: per pixel, the score,
//   offset and query gradients; then per (frame, channel slice), the bilinear scatter summed in
//   shared memory in a fixed order (a deterministic backward). A pixel's W warps are one block,
//   their per-tap channel sums added in warp order after a block barrier (deterministic too). Only
//   the frozen weight's gradient, when asked for, adds with atomics;
// - the general kernels, for every other op and shape: lanes stride over each group's channels, and
//   the backward scatters with atomics.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Context.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../sifa.h"

namespace sifa {
namespace ops {
namespace {

using math::Bilinear;
using math::Geometry;
using math::GeometryOf;

constexpr int kWarp = 32;
constexpr int kMaxWarpsPerBlock = 8;
constexpr int kMaxThreads = kWarp * kMaxWarpsPerBlock;
// Register budget: every kernel is declared for blocks of up to kMaxThreads threads; the slice
// kernels for two resident blocks per SM (16 warps), which caps them at 128 registers a thread:
// the forward keeps five S-channel arrays live, which fits up to S = 16 channels per lane, the
// backward's first pass six, which fits up to S = 8 (wider layers take more warps per pixel rather
// than more channels per lane). The double kernels (two registers a value) get one block per SM
// (up to 255 registers), as do the general kernels.
constexpr int kRegistersPerSM = 65536;
constexpr int register_cap(int blocks_per_sm) {
  return kRegistersPerSM / (kMaxThreads * blocks_per_sm) < 255 ? kRegistersPerSM / (kMaxThreads * blocks_per_sm) : 255;
}
constexpr int kSliceBlocksPerSM = 2;
template <typename scalar_t>
constexpr int kSliceBlocks = std::is_same_v<scalar_t, double> ? 1 : kSliceBlocksPerSM;
static_assert(register_cap(kSliceBlocks<float>) == 128, "the slice kernels' register budget");
constexpr int kMaxForwardSlice = 16, kMaxBackwardSlice = 8;  // channels per lane of the slice kernels
// The backward's taps unrolled (3×3) where the unrolled loop stays within the budget without spilling.
template <int kTaps, int S, int kMaxS>
constexpr int kUnrolledTaps = kTaps && S <= kMaxS ? kTaps : 1;
constexpr int64_t kDefaultSharedLimit = 48 * 1024;  // dynamic shared memory without an opt-in

// The sum over each run of kLanes lanes (the whole warp by default), on every lane of the run.
template <int kLanes = kWarp, typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int lane_mask = kLanes / 2; lane_mask > 0; lane_mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
  return v;
}

// A warp's slice of shared memory: the pixel's K taps and its G·K scores (those of the P pixels of a
// warp of the forward slice kernel, each lane seeing its own pixel's).
template <typename acc_t, typename index_t>
struct WarpShared {
  Bilinear<acc_t, index_t>* taps;
  acc_t* scores;

  static __host__ __device__ int64_t bytes(const GeometryOf<index_t>& g) {
    return g.taps() * int64_t(sizeof(Bilinear<acc_t, index_t>)) + g.groups * g.taps() * int64_t(sizeof(acc_t));
  }
};

template <typename acc_t, int P = 1, typename index_t>
__device__ __forceinline__ WarpShared<acc_t, index_t> warp_shared(unsigned char* smem, const GeometryOf<index_t>& g) {
  const int slot = threadIdx.x / (kWarp / P), slots = blockDim.x / (kWarp / P);  // the block's pixels
  WarpShared<acc_t, index_t> s;
  s.taps = reinterpret_cast<Bilinear<acc_t, index_t>*>(smem) + slot * g.taps();
  s.scores = reinterpret_cast<acc_t*>(reinterpret_cast<Bilinear<acc_t, index_t>*>(smem) + slots * g.taps()) +
             slot * g.groups * g.taps();
  return s;
}

// The index type of a call: int32_t where every tensor its kernels touch has fewer than 2^31
// elements (all of them dense, so every index is below that; ATen's canUse32BitIndexMath rule), else
// int64_t. The pixel loops' counters stay 64-bit (p plus the grid's stride may pass 2^31); each
// pixel's indices are index_t.
bool index32(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (t->defined() && t->numel() > std::numeric_limits<int32_t>::max()) return false;
  return true;
}

// Calls f(index_t{}) with the call's index type. SIFA_INDEX_TYPE, a test-only build flag of the
// warp emulator's variants (tests/emulation), compiles one path only: int64_t takes the 64-bit path
// at every size; int32_t compiles half the kernels, and a call that needs 64-bit indices raises.
template <typename F>
void with_index(std::initializer_list<const at::Tensor*> tensors, F&& f) {
#ifdef SIFA_INDEX_TYPE
  TORCH_CHECK(sizeof(SIFA_INDEX_TYPE) == 8 || index32(tensors),
              "sifa: this build (SIFA_INDEX_TYPE, a test-only flag) has no 64-bit index path");
  f(SIFA_INDEX_TYPE{});
#else
  if (index32(tensors)) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
#endif
}

// The pixels p = ((n·T + t)·H + h)·W + w of a call: their count and the divisions that decompose
// p, precomputed on the host (at::cuda::detail::IntDivider: for 32-bit indices a multiply-high, an
// add and a shift each instead of a division; for 64-bit ones the division).
template <typename index_t>
struct Pixels {
  using Divider = at::cuda::detail::IntDivider<std::make_unsigned_t<index_t>>;
  int64_t count;
  Divider W, H, T;

  explicit Pixels(const GeometryOf<index_t>& g)
      : count(int64_t(g.N) * g.T * g.plane()), W(g.W), H(g.H), T(g.T) {}
};

template <typename index_t>
struct Pixel {
  index_t n, t, h, w, hw;  // hw = h·W + w
};

template <typename index_t>
__device__ __forceinline__ Pixel<index_t> decompose(int64_t p, const Pixels<index_t>& pixels) {
  using unsigned_t = std::make_unsigned_t<index_t>;
  const auto row = pixels.W.divmod(static_cast<unsigned_t>(p));  // (n·T + t)·H + h, w
  const auto frame = pixels.H.divmod(row.div);                    // n·T + t, h
  const auto sample = pixels.T.divmod(frame.div);                 // n, t
  return {index_t(sample.div), index_t(sample.mod), index_t(frame.mod), index_t(row.mod),
          index_t(frame.mod * pixels.W.divisor + row.mod)};
}

// The kLanes lanes of a pixel (the warp's, by default) fill its shared taps: pixel (h, w) of frame t
// of sample n.
template <int kLanes = kWarp, typename acc_t, typename index_t, typename scalar_t>
__device__ __forceinline__ void load_taps(const Pixel<index_t>& px, const GeometryOf<index_t>& g, const scalar_t* off,
                                          const WarpShared<acc_t, index_t>& shared, int lane) {
  for (index_t k = lane % kLanes; k < g.taps(); k += kLanes)
    shared.taps[k] = g.template tap<acc_t>(off, px.n, k, px.t, px.h, px.w);
}

// The pixel p of a lane, its taps filled in by the pixel's kLanes lanes.
template <int kLanes = kWarp, typename acc_t, typename index_t, typename scalar_t>
__device__ __forceinline__ Pixel<index_t> load_pixel(int64_t p, const GeometryOf<index_t>& g, const Pixels<index_t>& pixels,
                                                     const scalar_t* off, const WarpShared<acc_t, index_t>& shared, int lane) {
  const Pixel<index_t> px = decompose(p, pixels);
  load_taps<kLanes>(px, g, off, shared, lane);
  return px;
}

// Grid-stride loop over `count` pixels (n, t, hw), or groups of pixels, one per W warps (consecutive
// warps of a block). With W > 1 a block is one pixel's W warps, so that every warp of a block goes
// round the loop as often as the others (the cross-warp sums' barriers need the whole block).
#define SIFA_PIXEL_LOOP(p, count, W)                                                                      \
  for (int64_t p = blockIdx.x * int64_t(blockDim.x / (kWarp * (W))) + threadIdx.x / (kWarp * (W)); \
       p < (count); p += int64_t(gridDim.x) * (blockDim.x / (kWarp * (W))))

// --- slice kernels -------------------------------------------------------------------------------

// The alignment of S consecutive elements of a C = 32·S row: the largest power of two dividing
// their bytes, at most 16 (so a slice is read with vector loads of up to 16 bytes: S = 3 floats as
// three 4-byte loads, S = 12 as three 16-byte loads).
constexpr int slice_alignment(int bytes) {
  int a = 1;
  while (a < 16 && bytes % (2 * a) == 0) a *= 2;
  return a;
}

// S consecutive elements, loaded and stored as aligned vectors.
template <typename T, int S>
struct alignas(slice_alignment(sizeof(T) * S)) Slice {
  T v[S];
};

// Widens two 16-bit elements packed in a 32-bit word: bfloat16 is the high half of a float (a shift
// and a mask), half goes through the packed half2 conversion.
template <typename scalar_t>
__device__ __forceinline__ float2 widen_pair(uint32_t pair) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    return make_float2(__uint_as_float(pair << 16), __uint_as_float(pair & 0xffff0000u));
  } else {
    __half2 h;
    memcpy(&h, &pair, sizeof h);
    return __half22float2(h);
  }
}

template <int S, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_slice(const scalar_t* p, acc_t (&out)[S]) {
  const auto s = *reinterpret_cast<const Slice<scalar_t, S>*>(p);
  if constexpr (sizeof(scalar_t) == 2 && S % 2 == 0) {
#pragma unroll
    for (int i = 0; i < S; i += 2) {
      uint32_t pair;
      memcpy(&pair, &s.v[i], sizeof pair);
      const float2 f = widen_pair<scalar_t>(pair);
      out[i] = f.x;
      out[i + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < S; ++i) out[i] = acc_t(s.v[i]);
  }
}

// Makes a lane's values opaque to the compiler, so that it keeps them in registers as they are:
// ptxas otherwise keeps a half or bfloat16 query packed and widens it again on every tap (sm_90
// SASS, nvcc 13.0: 16 instructions per tap at S = 16; docs/benchmarks.md, round 5).
template <int S>
__device__ __forceinline__ void keep_widened(float (&v)[S]) {
#ifdef __CUDA_ARCH__
#pragma unroll
  for (int i = 0; i < S; ++i) asm("" : "+f"(v[i]));
#endif
}

template <int S, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_slice(scalar_t* p, const acc_t (&in)[S]) {
  Slice<scalar_t, S> s;
#pragma unroll
  for (int i = 0; i < S; ++i) s.v[i] = static_cast<scalar_t>(in[i]);
  *reinterpret_cast<Slice<scalar_t, S>*>(p) = s;
}

// float4/float2 global atomics exist from sm_90 on. The warp emulator (no __CUDA_ARCH__) runs
// either path: SIFA_EMULATED_ARCH=800 selects the scalar one.
#if defined(__CUDA_ARCH__)
#define SIFA_VECTOR_ATOMICS (__CUDA_ARCH__ >= 900)
#elif defined(SIFA_EMULATED_ARCH)
#define SIFA_VECTOR_ATOMICS (SIFA_EMULATED_ARCH >= 900)
#else
#define SIFA_VECTOR_ATOMICS 1
#endif

// dst[0..S) += scale·v: float4/float2 atomics where the architecture has them, else scalar.
template <int S, typename acc_t>
__device__ __forceinline__ void atomic_add_slice(acc_t* dst, acc_t scale, const acc_t (&v)[S]) {
  constexpr bool kVectorAtomics = SIFA_VECTOR_ATOMICS && std::is_same_v<acc_t, float>;
  if constexpr (kVectorAtomics && S % 4 == 0) {
#pragma unroll
    for (int i = 0; i < S; i += 4)
      atomicAdd(reinterpret_cast<float4*>(dst + i),
                make_float4(scale * v[i], scale * v[i + 1], scale * v[i + 2], scale * v[i + 3]));
  } else if constexpr (kVectorAtomics && S % 2 == 0) {
#pragma unroll
    for (int i = 0; i < S; i += 2) atomicAdd(reinterpret_cast<float2*>(dst + i), make_float2(scale * v[i], scale * v[i + 1]));
  } else {
#pragma unroll
    for (int i = 0; i < S; ++i) gpuAtomicAdd(dst + i, scale * v[i]);
  }
}

// A pixel's channel sums over its W warps (the block, kWarp·S channels each): each warp reduces its
// lanes' terms with shuffles (every lane gets the same bits); for W > 1 its lane 0 puts them in
// shared memory and, after the block's barrier, every lane adds the W warps' terms in warp order
// (the same order on every lane and every run). Two slots taken in turn: a slot is written again
// only after the next barrier, which no warp passes before every warp has read it.
template <int W, int kTerms, typename acc_t, int kLanes = kWarp>
struct PixelSums {
  acc_t* slots;  // [2][W][kTerms], after the block's warp slices of shared memory
  int round = 0;

  static __host__ __device__ int64_t bytes() { return W > 1 ? 2 * W * kTerms * int64_t(sizeof(acc_t)) : 0; }

  __device__ __forceinline__ void sum(acc_t (&v)[kTerms], int part, int lane) {
#pragma unroll
    for (int i = 0; i < kTerms; ++i) v[i] = warp_sum<kLanes>(v[i]);
    if constexpr (W > 1) {
      acc_t* slot = slots + (round ^= 1) * W * kTerms;
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < kTerms; ++i) slot[part * kTerms + i] = v[i];
      }
      __syncthreads();  // every warp's partial sums written
#pragma unroll
      for (int i = 0; i < kTerms; ++i) {
        acc_t total = slot[i];
#pragma unroll
        for (int w = 1; w < W; ++w) total += slot[w * kTerms + i];
        v[i] = total;
      }
    }
  }
};

template <int W, int kTerms, typename acc_t, int kLanes = kWarp, typename index_t>
__device__ __forceinline__ PixelSums<W, kTerms, acc_t, kLanes> pixel_sums(unsigned char* smem, const GeometryOf<index_t>& g) {
  return {reinterpret_cast<acc_t*>(smem + blockDim.x / kWarp * WarpShared<acc_t, index_t>::bytes(g))};
}

// Fused forward, one group, C = 32·S·W/P: per tap, the lane's S samples stay in registers from the
// score's dot product to the aggregation; the score goes to global memory once (to shared memory only
// as a warp's part of the cross-warp sum, W > 1). At the narrow widths a warp takes P pixels, 32/P
// lanes each (W = 1), so that the per-tap work that does not depend on the channels (reading the
// tap, the addresses, the score's store) and the shuffles are shared by P pixels. The pixel loop
// goes round per group of P pixels; past the last pixel a lane computes the last one again and
// stores nothing (the warp's shuffles need all its lanes).
template <typename scalar_t, int S, int W, int P, int kTaps, typename index_t>
__global__ void __launch_bounds__(kMaxThreads, kSliceBlocks<scalar_t>) forward_slice_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                     const at::acc_type<scalar_t, true>* __restrict__ wt, at::acc_type<scalar_t, true>* __restrict__ sc,
                                     scalar_t* __restrict__ out, GeometryOf<index_t> g, Pixels<index_t> pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  static_assert(S <= kMaxForwardSlice, "the slice kernels' register budget");
  static_assert(P == 1 || W == 1, "several pixels per warp, or several warps per pixel");
  constexpr int kLanes = kWarp / P;  // a pixel's lanes
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t, P>(smem, g);
  auto sums = pixel_sums<W, 1, acc_t, kLanes>(smem, g);
  const int lane = threadIdx.x % kWarp, part = threadIdx.x / kWarp % W;
  const index_t C = kLanes * S * W, K = kTaps ? kTaps : g.taps(), HW = g.plane(), c = (part * kLanes + lane % kLanes) * S;
  SIFA_PIXEL_LOOP(pixel_group, (pixels.count + P - 1) / P, W) {
    const int64_t mine = pixel_group * P + lane / kLanes;
    const bool stores = mine < pixels.count;
    const int64_t p = stores ? mine : pixels.count - 1;
    const auto [n, t, h, w, hw] = load_pixel<kLanes>(p, g, pixels, off, shared, lane);
    __syncwarp();  // taps written
    // element indices summed in index_t before they meet the pointer: one widening add per access
    const index_t frame = (n * g.T + t) * HW * C + c;
    acc_t q[S], acc[S];
    load_slice<S>(x + (((n * g.T + g.prev_frame(t)) * HW + hw) * C + c), q);
    if constexpr (sizeof(scalar_t) == 2) keep_widened(q);
#pragma unroll
    for (int i = 0; i < S; ++i) acc[i] = 0;
#pragma unroll 1  // unrolled, the 3×3 loop spills at the narrow widths (nvcc 13.0, sm_90)
    for (index_t k = 0; k < K; ++k) {
      const Bilinear<acc_t, index_t> b = shared.taps[k];
      acc_t s[S], wk[S], v[S];
#pragma unroll
      for (int i = 0; i < S; ++i) s[i] = 0;
#pragma unroll
      for (int corner = 0; corner < 4; ++corner) {
        load_slice<S>(x + (frame + b.index[corner] * C), v);  // outside the image: pixel 0, weight 0
#pragma unroll
        for (int i = 0; i < S; ++i) s[i] += b.weight[corner] * v[i];
      }
      load_slice<S>(wt + ((t * K + k) * C + c), wk);
      acc_t score[1] = {0};
#pragma unroll
      for (int i = 0; i < S; ++i) score[0] += wk[i] * q[i] * s[i];
      sums.sum(score, part, lane);
      if (c == 0 && stores) sc[g.score_index(n, 0, k, t, hw)] = score[0];
#pragma unroll
      for (int i = 0; i < S; ++i) acc[i] += score[0] * s[i];
    }
    if (stores) store_slice<S>(out + (index_t(p) * C + c), acc);
    __syncwarp();  // the shared taps are rewritten for the next pixel
  }
}

// Fused backward, one group, C = 32·S·W, first of two passes (per pixel, no scatter): per tap each
// corner's slice is read once, for the sample and for the dot products that give the score and
// offset gradients. Every output is written once: the offset gradients, the score gradient
// (grad_score, read by scatter_slice_kernel) and the query gradient summed over the taps in
// registers (grad_query, pixel p's share of frame prev(t)'s input gradient). Atomics only for the
// frozen weight's gradient, when asked for.
template <typename scalar_t, int S, int W, int kTaps, typename index_t>
__global__ void __launch_bounds__(kMaxThreads, kSliceBlocks<scalar_t>) backward_slice_kernel(const scalar_t* __restrict__ go, const at::acc_type<scalar_t, true>* __restrict__ gsc_in,
                                      const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                      const at::acc_type<scalar_t, true>* __restrict__ wt, const at::acc_type<scalar_t, true>* __restrict__ sc,
                                      at::acc_type<scalar_t, true>* __restrict__ grad_score,
                                      at::acc_type<scalar_t, true>* __restrict__ grad_query, scalar_t* __restrict__ goff,
                                      at::acc_type<scalar_t, true>* gw, GeometryOf<index_t> g, Pixels<index_t> pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  static_assert(S <= kMaxBackwardSlice, "the slice kernels' register budget");
  constexpr int kUnroll = kUnrolledTaps<kTaps, S, 4>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t>(smem, g);
  auto pixel = pixel_sums<W, 5, acc_t>(smem, g);
  const int lane = threadIdx.x % kWarp, part = threadIdx.x / kWarp % W;
  const index_t C = kWarp * S * W, K = kTaps ? kTaps : g.taps(), HW = g.plane(), c = (part * kWarp + lane) * S;
  SIFA_PIXEL_LOOP(p, pixels.count, W) {
    const auto [n, t, h, w, hw] = load_pixel(p, g, pixels, off, shared, lane);
    __syncwarp();  // taps written
    const index_t nt = n * g.T + t, pc = index_t(p) * C + c, query_pixel = (n * g.T + g.prev_frame(t)) * HW + hw;
    const index_t frame = nt * HW * C + c;  // indices summed in index_t, as in the forward
    acc_t q[S], grad_out[S], gq[S];
    load_slice<S>(x + (query_pixel * C + c), q);
    load_slice<S>(go + pc, grad_out);
#pragma unroll
    for (int i = 0; i < S; ++i) gq[i] = 0;
#pragma unroll(kUnroll)
    for (index_t k = 0; k < K; ++k) {
      const Bilinear<acc_t, index_t> b = shared.taps[k];
      const index_t si = g.score_index(n, 0, k, t, hw);
      const acc_t score = sc[si];
      acc_t wk[S], sample[S], v[S];
      load_slice<S>(wt + ((t * K + k) * C + c), wk);
#pragma unroll
      for (int i = 0; i < S; ++i) sample[i] = 0;
      // The channel sums of section 3 of docs/design.md regrouped by corner, so that no per-channel
      // derivative is kept: Σ_c go_c·∂s_c/∂y = Σ_corner ∂w_corner/∂y · (Σ_c go_c·v_corner,c), and
      // likewise for the sample and the correlation's w·q terms. The five sums of math::ChannelTerms,
      // over the pixel's channels (its W warps).
      enum { kAggS, kAggY, kAggX, kCorY, kCorX };
      acc_t sums[5] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
#pragma unroll
      for (int corner = 0; corner < 4; ++corner) {
        load_slice<S>(x + (frame + b.index[corner] * C), v);  // outside the image: pixel 0, weights 0
        acc_t by_grad_out = 0, by_weight_query = 0;
#pragma unroll
        for (int i = 0; i < S; ++i) {
          sample[i] += b.weight[corner] * v[i];
          by_grad_out += grad_out[i] * v[i];
          by_weight_query += wk[i] * q[i] * v[i];
        }
        sums[kAggS] += b.weight[corner] * by_grad_out;
        sums[kAggY] += b.dweight_dy[corner] * by_grad_out;
        sums[kAggX] += b.dweight_dx[corner] * by_grad_out;
        sums[kCorY] += b.dweight_dy[corner] * by_weight_query;
        sums[kCorX] += b.dweight_dx[corner] * by_weight_query;
      }
      pixel.sum(sums, part, lane);
      const acc_t gs = sums[kAggS] + (gsc_in ? gsc_in[si] : acc_t(0));
      if (c == 0) {
        if (grad_score) grad_score[si] = gs;
        if (goff) {
          goff[g.offset_index(n, k, 0, t, hw)] = static_cast<scalar_t>(score * sums[kAggY] + gs * sums[kCorY]);
          goff[g.offset_index(n, k, 1, t, hw)] = static_cast<scalar_t>(score * sums[kAggX] + gs * sums[kCorX]);
        }
      }
      if (gw) {
#pragma unroll
        for (int i = 0; i < S; ++i) v[i] = q[i] * sample[i];
        atomic_add_slice<S>(gw + ((nt * K + k) * C + c), gs, v);
      }
#pragma unroll
      for (int i = 0; i < S; ++i) gq[i] += gs * wk[i] * sample[i];
    }
    if (grad_query) store_slice<S>(grad_query + pc, gq);
    __syncwarp();  // the shared taps are rewritten for the next pixel
  }
}

// Fused backward, second pass: the input gradient, without global atomics and in a fixed order.
// One block per (frame n·T + t, slice of 32·s channels, band of the frame's pixels): its warps take
// the frame's pixels in turn, each scattering the corner shares that land in the band into a copy
// of the band's slice of its own in shared memory (a lane owns s channels: no shared atomics
// either); the block then sums the copies in warp order, adds the query gradients of the frames
// whose query is frame t (t + 1, and t itself for t = 0) and stores the slice once. Outputs do
// not depend on the lane schedule or the grid: bitwise the same run to run.
template <typename scalar_t, int s, int kTaps, typename index_t>
__global__ void __launch_bounds__(kMaxThreads, kSliceBlocks<scalar_t>) scatter_slice_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ off, const at::acc_type<scalar_t, true>* __restrict__ wt,
                                     const at::acc_type<scalar_t, true>* __restrict__ sc,
                                     const at::acc_type<scalar_t, true>* __restrict__ grad_score,
                                     const at::acc_type<scalar_t, true>* __restrict__ grad_query,
                                     at::acc_type<scalar_t, true>* __restrict__ gx, GeometryOf<index_t> g,
                                     Pixels<index_t> pixels, index_t band_pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  constexpr int kUnroll = kUnrolledTaps<kTaps, s, 2>;
  constexpr int kSlice = kWarp * s;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  const index_t C = g.C, K = kTaps ? kTaps : g.taps(), HW = g.plane();
  const index_t slices = C / kSlice, bands = (HW + band_pixels - 1) / band_pixels;
  const auto shared = warp_shared<acc_t>(smem, g);
  acc_t* copies = reinterpret_cast<acc_t*>(smem + warps * WarpShared<acc_t, index_t>::bytes(g));  // [warp][band pixel][kSlice]
  // item, like the pixel loops' p, in 64 bits: plus the grid's stride it may pass 2^31
  for (int64_t item = blockIdx.x; item < int64_t(g.N) * g.T * slices * bands; item += gridDim.x) {
    const index_t nt = index_t(item / (slices * bands)), n = nt / g.T, t = nt % g.T;
    const index_t c0 = index_t(item / bands % slices) * kSlice, first = index_t(item % bands) * band_pixels;
    const index_t len = HW - first < band_pixels ? HW - first : band_pixels;
    for (index_t i = threadIdx.x; i < warps * len * kSlice; i += blockDim.x) copies[i] = 0;
    __syncthreads();  // copies zeroed
    acc_t* mine = copies + warp * len * kSlice + lane * s;
    const index_t query_frame = (n * g.T + g.prev_frame(t)) * HW * C + c0 + lane * s;  // as in the forward
    for (index_t hw = warp; hw < HW; hw += warps) {
      const auto row = pixels.W.divmod(hw);
      load_taps(Pixel<index_t>{n, t, index_t(row.div), index_t(row.mod), hw}, g, off, shared, lane);
      __syncwarp();  // taps written
      acc_t grad_out[s], wq[s], w[s], v[s];
      load_slice<s>(go + ((nt * HW + hw) * C + c0 + lane * s), grad_out);
      load_slice<s>(x + (query_frame + hw * C), wq);
#pragma unroll(kUnroll)
      for (index_t k = 0; k < K; ++k) {
        const Bilinear<acc_t, index_t> b = shared.taps[k];
        const index_t si = g.score_index(n, 0, k, t, hw);
        const acc_t score = sc[si], gs = grad_score[si];
        load_slice<s>(wt + ((t * K + k) * C + c0 + lane * s), w);
#pragma unroll
        for (int i = 0; i < s; ++i) v[i] = math::corner_value<true, true>(score, grad_out[i], gs, w[i] * wq[i]);
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          const index_t local = b.index[corner] - first;
          if (b.weight[corner] != acc_t(0) && local >= 0 && local < len) {  // the same for every lane
#pragma unroll
            for (int i = 0; i < s; ++i) mine[local * kSlice + i] += b.weight[corner] * v[i];
          }
        }
      }
      __syncwarp();  // the shared taps are rewritten for the next pixel
    }
    __syncthreads();  // every warp's copy complete
    for (index_t i = threadIdx.x; i < len * kSlice; i += blockDim.x) {
      const index_t hw = first + i / kSlice, c = c0 + i % kSlice;
      acc_t sum = 0;
      for (int copy = 0; copy < warps; ++copy) sum += copies[copy * len * kSlice + i];
      if (t + 1 < g.T) sum += grad_query[((nt + 1) * HW + hw) * C + c];
      if (t == 0) sum += grad_query[(nt * HW + hw) * C + c];
      gx[(nt * HW + hw) * C + c] = sum;
    }
    __syncthreads();  // the copies are zeroed again for the next item
  }
}

// --- general kernels -----------------------------------------------------------------------------

template <typename scalar_t, bool kCorrelate, bool kAggregate, typename index_t>
__global__ void __launch_bounds__(kMaxThreads, 1) forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                               const at::acc_type<scalar_t, true>* __restrict__ wt, at::acc_type<scalar_t, true>* __restrict__ sc,
                               scalar_t* __restrict__ out, GeometryOf<index_t> g, Pixels<index_t> pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t>(smem, g);
  const int lane = threadIdx.x % kWarp;
  const index_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  SIFA_PIXEL_LOOP(p, pixels.count, 1) {
    const auto [n, t, h, w, hw] = load_pixel(p, g, pixels, off, shared, lane);
    const scalar_t* frame = x + (n * g.T + t) * HW * C;
    if constexpr (!kCorrelate) {
      for (index_t j = lane; j < g.groups * K; j += kWarp)
        shared.scores[j] = sc[g.score_index(n, j / K, j % K, t, hw)];
    }
    __syncwarp();  // taps (and scores) written
    if constexpr (kCorrelate) {
      const scalar_t* q = x + ((n * g.T + g.prev_frame(t)) * HW + hw) * C;
      for (index_t k = 0; k < K; ++k) {
        const Bilinear<acc_t, index_t>& b = shared.taps[k];
        const acc_t* wk = wt + (t * K + k) * C;
        for (index_t grp = 0; grp < g.groups; ++grp) {
          acc_t partial = 0;
          for (index_t c = grp * Cg + lane; c < (grp + 1) * Cg; c += kWarp)
            partial += wk[c] * acc_t(q[c]) * math::interpolate(b, frame + c, C);
          const acc_t score = warp_sum(partial);
          if (lane == 0) {
            sc[g.score_index(n, grp, k, t, hw)] = score;
            shared.scores[grp * K + k] = score;
          }
        }
      }
      __syncwarp();
    }
    if constexpr (kAggregate) {
      // the corners were just read for the scores: this second sweep hits L1/L2
      scalar_t* o = out + index_t(p) * C;
      index_t grp = lane / Cg, next_group = (grp + 1) * Cg;  // the channel's group, without a division per channel
      for (index_t c = lane; c < C; c += kWarp) {
        while (c >= next_group) {
          ++grp;
          next_group += Cg;
        }
        const acc_t* scores = shared.scores + grp * K;
        acc_t acc = 0;
        for (index_t k = 0; k < K; ++k) acc += scores[k] * math::interpolate(shared.taps[k], frame + c, C);
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
template <typename scalar_t, bool kCorrelate, bool kAggregate, typename index_t>
__global__ void __launch_bounds__(kMaxThreads, 1) backward_kernel(const scalar_t* __restrict__ go, const at::acc_type<scalar_t, true>* __restrict__ gsc_in,
                                const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                                const at::acc_type<scalar_t, true>* __restrict__ wt, const at::acc_type<scalar_t, true>* __restrict__ sc,
                                at::acc_type<scalar_t, true>* gx, scalar_t* __restrict__ goff,
                                at::acc_type<scalar_t, true>* gw, at::acc_type<scalar_t, true>* __restrict__ gsc_out,
                                GeometryOf<index_t> g, Pixels<index_t> pixels) {
  using acc_t = at::acc_type<scalar_t, true>;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto shared = warp_shared<acc_t>(smem, g);
  const int lane = threadIdx.x % kWarp;
  const index_t C = g.C, Cg = g.group_channels(), K = g.taps(), HW = g.plane();
  SIFA_PIXEL_LOOP(p, pixels.count, 1) {
    const auto [n, t, h, w, hw] = load_pixel(p, g, pixels, off, shared, lane);
    __syncwarp();  // taps written
    const index_t nt = n * g.T + t, query_pixel = (n * g.T + g.prev_frame(t)) * HW + hw;
    const scalar_t* frame = x + nt * HW * C;
    const scalar_t* q = x + query_pixel * C;
    const scalar_t* gop = kAggregate ? go + index_t(p) * C : nullptr;
    for (index_t k = 0; k < K; ++k) {
      const Bilinear<acc_t, index_t>& b = shared.taps[k];
      const acc_t* wk = kCorrelate ? wt + (t * K + k) * C : nullptr;
      acc_t off_y = 0, off_x = 0;  // offsets are shared by all groups: their gradients add up
      for (index_t grp = 0; grp < g.groups; ++grp) {
        const index_t c0 = grp * Cg, c1 = c0 + Cg;
        const index_t si = g.score_index(n, grp, k, t, hw);
        const acc_t score = kAggregate ? sc[si] : acc_t(0);
        math::ChannelTerms<acc_t> sums{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (index_t c = c0 + lane; c < c1; c += kWarp) {
          sums += math::channel_terms<kCorrelate, kAggregate>(
              math::interpolate_with_grad(b, frame + c, C), kAggregate ? acc_t(gop[c]) : acc_t(0),
              kCorrelate ? wk[c] * acc_t(q[c]) : acc_t(0));
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
        const acc_t grad_score = kCorrelate ? sums.agg_s + (gsc_in ? gsc_in[si] : acc_t(0)) : acc_t(0);
        if (gsc_out && lane == 0) gsc_out[si] = sums.agg_s;
        off_y += score * sums.agg_y + grad_score * sums.cor_y;
        off_x += score * sums.agg_x + grad_score * sums.cor_x;
        if (gx || gw) {
          acc_t* gx_frame = gx ? gx + nt * HW * C : nullptr;
          for (index_t c = c0 + lane; c < c1; c += kWarp) {
            const acc_t qc = kCorrelate ? acc_t(q[c]) : acc_t(0);
            const acc_t wc = kCorrelate ? wk[c] : acc_t(0);
            if constexpr (kCorrelate) {
              const acc_t s = math::interpolate(b, frame + c, C);
              if (gx) gpuAtomicAdd(gx + query_pixel * C + c, grad_score * wc * s);  // the query is frame prev(t)
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

// --- launch --------------------------------------------------------------------------------------

// Launch configuration of the pixel kernels: as many warps per block (up to 8) as the shared
// memory allows, each needing its pixel's taps and scores (its P pixels' for a forward slice kernel
// with P pixels per warp); the grid-stride loop covers the rest.
// With W > 1 warps per pixel, a block is one pixel's W warps, plus `sums_bytes` for their
// cross-warp sums (PixelSums). Beyond the default 48 KB per block the kernel opts in to the
// device's larger limit.
struct LaunchConfig {
  unsigned blocks;
  int threads;
  int64_t shared_bytes;
};

template <typename acc_t, typename index_t, typename Kernel>
LaunchConfig launch_config(Kernel* kernel, const GeometryOf<index_t>& g, int64_t pixels, int W = 1,
                           int64_t sums_bytes = 0, int P = 1) {
  const int64_t per_warp = P * WarpShared<acc_t, index_t>::bytes(g);
  int device = 0, opt_in = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&opt_in, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t limit = std::max<int64_t>(kDefaultSharedLimit, opt_in);
  TORCH_CHECK(W * per_warp + sums_bytes <= limit, "sifa (CUDA): a ", g.kh, "×", g.kw, " kernel with ", g.groups,
              " groups needs ", W * per_warp + sums_bytes, " bytes of shared memory per pixel, over the device's ",
              limit);
  const int warps = W > 1 ? W : static_cast<int>(std::min<int64_t>(kMaxWarpsPerBlock, limit / per_warp));
  const int64_t bytes = warps * per_warp + sums_bytes;
  if (bytes > kDefaultSharedLimit)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const int pixels_per_block = warps / W * P;
  const auto blocks = std::min<int64_t>((pixels + pixels_per_block - 1) / pixels_per_block, int64_t(1) << 20);
  return {static_cast<unsigned>(blocks), warps * kWarp, bytes};
}

// Launch configuration of scatter_slice_kernel: up to 8 warps per block, each with its pixel's taps
// and a copy of the block's slice of the frame, within half the device's opt-in shared memory (two
// blocks per SM); where one copy of a frame's slice does not fit, one warp per block and the frame
// cut into bands of pixels (each block then reads every pixel of the frame for its band).
struct ScatterConfig {
  LaunchConfig launch;
  int64_t band_pixels;
};

template <typename acc_t, int s, typename index_t, typename Kernel>
ScatterConfig scatter_config(Kernel* kernel, const GeometryOf<index_t>& g) {
  int device = 0, opt_in = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&opt_in, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t budget = std::max<int64_t>(kDefaultSharedLimit, opt_in) / 2;
  const int64_t taps = WarpShared<acc_t, index_t>::bytes(g), pixel = kWarp * s * int64_t(sizeof(acc_t));
  TORCH_CHECK(taps + pixel <= budget, "sifa (CUDA): a ", g.kh, "×", g.kw, " kernel needs ", taps + pixel,
              " bytes of shared memory per warp, over ", budget);
  const int64_t frame = taps + g.plane() * pixel;
  const int warps = static_cast<int>(std::clamp<int64_t>(budget / frame, 1, kMaxWarpsPerBlock));
  const int64_t band_pixels = std::min<int64_t>(g.plane(), (budget - taps) / pixel);
  const int64_t bytes = warps * (taps + band_pixels * pixel);
  if (bytes > kDefaultSharedLimit)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const int64_t items = int64_t(g.N) * g.T * (g.C / (kWarp * s)) * ((g.plane() + band_pixels - 1) / band_pixels);
  return {{static_cast<unsigned>(std::min<int64_t>(items, int64_t(1) << 20)), warps * kWarp, bytes}, band_pixels};
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

bool aligned(const at::Tensor& t, int64_t bytes) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

// The widths the slice kernels serve, C = 32·S·W/P: S channels per lane, W warps per pixel, P pixels
// per warp — one warp while a lane's channels fit the pass's register budget (the forward up to 16
// channels, C ≤ 512; the backward up to 8, C ≤ 256), then the fewest warps that keep them within
// it; the forward's narrow widths (C ≤ 128) two pixels per warp, 16 lanes each, so that a warp's
// per-tap work that does not depend on the channels serves two pixels. The same widths in both
// passes: C = 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536.
template <int S_, int W_, int P_ = 1>
struct SliceShape {
  static constexpr int S = S_, W = W_, P = P_;
};
using ForwardShapes = std::tuple<SliceShape<4, 1, 2>, SliceShape<6, 1, 2>, SliceShape<8, 1, 2>, SliceShape<6, 1>, SliceShape<8, 1>,
                                 SliceShape<12, 1>, SliceShape<16, 1>, SliceShape<12, 2>, SliceShape<16, 2>, SliceShape<16, 3>>;
// The forward for 2-byte elements (half, bfloat16): twice the channels per lane and twice the
// pixels per warp where the budget allows (S ≤ 16, C ≤ 256), so that a lane reads a corner in as
// many vector loads as float does (S = 16: two 16-byte loads) and the per-tap work that does not
// depend on the channels serves twice the pixels, to offset the widening each element read costs
// over float (with the query kept widened and the weight read in float, bfloat16 issues fewer
// instructions per pixel than float at C = 128 and 256; docs/benchmarks.md, rounds 4 and 5). From
// C = 384 on, as float.
using ForwardShapes2Byte = std::tuple<SliceShape<8, 1, 4>, SliceShape<12, 1, 4>, SliceShape<16, 1, 4>, SliceShape<12, 1, 2>,
                                      SliceShape<16, 1, 2>, SliceShape<12, 1>, SliceShape<16, 1>, SliceShape<12, 2>,
                                      SliceShape<16, 2>, SliceShape<16, 3>>;
template <typename scalar_t>
using ForwardShapesOf = std::conditional_t<sizeof(scalar_t) == 2, ForwardShapes2Byte, ForwardShapes>;
using BackwardShapes = std::tuple<SliceShape<2, 1>, SliceShape<3, 1>, SliceShape<4, 1>, SliceShape<6, 1>, SliceShape<8, 1>,
                                  SliceShape<6, 2>, SliceShape<8, 2>, SliceShape<8, 3>, SliceShape<8, 4>, SliceShape<8, 6>>;

template <typename F, typename... Shapes>
bool with_slice_shape(int64_t C, F&& f, std::tuple<Shapes...>*) {
  return ((C == kWarp / Shapes::P * Shapes::S * Shapes::W && f(Shapes{})) || ...);
}

// Calls f(SliceShape<S, W, P>), one of Shapes, when the slice kernels serve the call, else returns false.
// `features`: the tensors whose alignment is checked against the slice's vector width (a
// channels-last view at an odd storage offset takes the general kernels). The weight is not among
// them: it is weight_tkc's fresh copy, in the accumulation type.
template <typename Shapes, typename scalar_t, typename index_t, typename F>
bool with_slice(const GeometryOf<index_t>& g, Parts parts, std::initializer_list<const at::Tensor*> features, F&& f) {
  if (!(parts.correlate && parts.aggregate) || g.groups != 1) return false;
  return with_slice_shape(g.C, [&](auto shape) {
    const int64_t vector_bytes = slice_alignment(static_cast<int>(decltype(shape)::S * sizeof(scalar_t)));
    for (const at::Tensor* t : features)
      if (!aligned(*t, vector_bytes)) return false;  // e.g. a channels-last view at an odd storage offset
    f(shape);
    return true;
  }, static_cast<Shapes*>(nullptr));
}

// Calls f(std::integral_constant<int, kTaps>): 9 for 3×3 taps (the networks' kernels, unrolled),
// else 0 (K read from the geometry).
template <typename index_t, typename F>
void with_taps(const GeometryOf<index_t>& g, F&& f) {
  if (g.kh == 3 && g.kw == 3) {
    f(std::integral_constant<int, 9>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

struct CudaKernels {
  static constexpr bool kQueryGradientBuffer = false;  // added straight into grad_x at prev(t)

  static void forward(const ForwardTensors& ts, const Geometry& shape, Parts parts) {
    const c10::cuda::CUDAGuard guard(ts.x.device());
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts.x.scalar_type(), "sifa_forward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      with_index({&ts.x, &ts.offset, &ts.weight, &ts.scores, &ts.out}, [&](auto index) {
        using index_t = decltype(index);
        const auto g = shape.as<index_t>();
        const Pixels<index_t> pixels(g);
        const bool sliced = with_slice<ForwardShapesOf<scalar_t>, scalar_t>(g, parts, {&ts.x, &ts.out}, [&](auto slice) {
          using Shape = decltype(slice);
          with_taps(g, [&](auto taps) {
            const auto kernel = forward_slice_kernel<scalar_t, Shape::S, Shape::W, Shape::P, decltype(taps)::value, index_t>;
            const auto cfg = launch_config<acc_t>(kernel, g, pixels.count, Shape::W, PixelSums<Shape::W, 1, acc_t>::bytes(),
                                                  Shape::P);
            kernel<<<cfg.blocks, cfg.threads, cfg.shared_bytes, stream>>>(
                ts.x.data_ptr<scalar_t>(), ts.offset.data_ptr<scalar_t>(), ts.weight.data_ptr<acc_t>(),
                ts.scores.data_ptr<acc_t>(), ts.out.data_ptr<scalar_t>(), g, pixels);
          });
        });
        if (!sliced) {
          with_parts(parts, [&](auto cor, auto agg) {
            const auto kernel = forward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value, index_t>;
            const auto cfg = launch_config<acc_t>(kernel, g, pixels.count);
            kernel<<<cfg.blocks, cfg.threads, cfg.shared_bytes, stream>>>(
                ts.x.data_ptr<scalar_t>(), ts.offset.data_ptr<scalar_t>(), ptr_or_null<acc_t>(ts.weight),
                ts.scores.data_ptr<acc_t>(), ptr_or_null<scalar_t>(ts.out), g, pixels);
          });
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward(const BackwardTensors& ts, const Geometry& shape, Parts parts) {
    const c10::cuda::CUDAGuard guard(ts.x.device());
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts.x.scalar_type(), "sifa_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      // the slice kernels' intermediate score and query gradients are as large as the scores and the features
      with_index({&ts.grad_out, &ts.grad_scores, &ts.x, &ts.offset, &ts.weight, &ts.scores, &ts.grad_x, &ts.grad_offset,
                  &ts.grad_weight, &ts.grad_scores_out}, [&](auto index) {
        using index_t = decltype(index);
        const auto g = shape.as<index_t>();
        const Pixels<index_t> pixels(g);
        const bool sliced = ts.grad_scores_out.defined() ? false : with_slice<BackwardShapes, scalar_t>(
            g, parts, {&ts.x, &ts.grad_out, &ts.grad_x, &ts.grad_weight}, [&](auto slice) {
              using Shape = decltype(slice);
              if (ts.grad_weight.defined())
                at::globalContext().alertNotDeterministic("sifa backward (CUDA): the weight gradient adds with atomics");
              // the input gradient's second pass reads the score and query gradients of the first
              at::Tensor grad_score, grad_query;
              if (ts.grad_x.defined()) {
                grad_score = at::empty_like(ts.scores);
                grad_query = at::empty(ts.x.sizes(), ts.scores.options());
              }
              with_taps(g, [&](auto taps) {
                constexpr int kTaps = decltype(taps)::value;
                const auto kernel = backward_slice_kernel<scalar_t, Shape::S, Shape::W, kTaps, index_t>;
                const auto cfg = launch_config<acc_t>(kernel, g, pixels.count, Shape::W,
                                                      PixelSums<Shape::W, 5, acc_t>::bytes());
                kernel<<<cfg.blocks, cfg.threads, cfg.shared_bytes, stream>>>(
                    ts.grad_out.data_ptr<scalar_t>(), ptr_or_null<acc_t>(ts.grad_scores), ts.x.data_ptr<scalar_t>(),
                    ts.offset.data_ptr<scalar_t>(), ts.weight.data_ptr<acc_t>(), ts.scores.data_ptr<acc_t>(),
                    ptr_or_null<acc_t>(grad_score), ptr_or_null<acc_t>(grad_query),
                    ptr_or_null<scalar_t>(ts.grad_offset), ptr_or_null<acc_t>(ts.grad_weight), g, pixels);
                if (!ts.grad_x.defined()) return;
                C10_CUDA_KERNEL_LAUNCH_CHECK();
                // two channels per lane where C is a multiple of 64, else one
                const auto scatter_with = [&](auto channels) {
                  constexpr int s = decltype(channels)::value;
                  const auto scatter = scatter_slice_kernel<scalar_t, s, kTaps, index_t>;
                  const auto sc_cfg = scatter_config<acc_t, s>(scatter, g);
                  scatter<<<sc_cfg.launch.blocks, sc_cfg.launch.threads, sc_cfg.launch.shared_bytes, stream>>>(
                      ts.grad_out.data_ptr<scalar_t>(), ts.x.data_ptr<scalar_t>(), ts.offset.data_ptr<scalar_t>(),
                      ts.weight.data_ptr<acc_t>(), ts.scores.data_ptr<acc_t>(), grad_score.data_ptr<acc_t>(),
                      grad_query.data_ptr<acc_t>(), ts.grad_x.data_ptr<acc_t>(), g, pixels,
                      index_t(sc_cfg.band_pixels));
                };
                if constexpr (Shape::S * Shape::W % 2 == 0) {
                  scatter_with(std::integral_constant<int, 2>{});
                } else {
                  scatter_with(std::integral_constant<int, 1>{});
                }
              });
            });
        if (!sliced) {
          if (ts.grad_x.defined() || ts.grad_weight.defined())
            at::globalContext().alertNotDeterministic("sifa backward (CUDA): the bilinear scatter adds with atomics");
          with_parts(parts, [&](auto cor, auto agg) {
            const auto kernel = backward_kernel<scalar_t, decltype(cor)::value, decltype(agg)::value, index_t>;
            const auto cfg = launch_config<acc_t>(kernel, g, pixels.count);
            kernel<<<cfg.blocks, cfg.threads, cfg.shared_bytes, stream>>>(
                ptr_or_null<scalar_t>(ts.grad_out), ptr_or_null<acc_t>(ts.grad_scores), ts.x.data_ptr<scalar_t>(),
                ts.offset.data_ptr<scalar_t>(), ptr_or_null<acc_t>(ts.weight), ptr_or_null<acc_t>(ts.scores),
                ptr_or_null<acc_t>(ts.grad_x), ptr_or_null<scalar_t>(ts.grad_offset), ptr_or_null<acc_t>(ts.grad_weight),
                ptr_or_null<acc_t>(ts.grad_scores_out), g, pixels);
          });
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

SIFA_REGISTER_KERNELS(CUDA, CudaKernels)

}  // namespace ops
}  // namespace sifa
