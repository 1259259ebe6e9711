// Host stand-ins for the CUDA built-ins the SIFA kernels use, so that the unmodified device code of
// cuda_sifa/csrc/ops/cuda/sifa_kernel.cu compiles with g++ and runs on the CPU. Each thread of a block
// is a fiber (runtime.cpp); fibers switch only at warp and block synchronisation points, so shuffles
// exchange the values real lanes would hold and a missing sync shows up as a different result, a
// reported race or a divergence error. Force-included (-include) before the kernel file; the build
// (tests/emulation/build.py) rewrites the two CUDA-only syntaxes, `k<<<grid, block, shmem, stream>>>(…)`
// and `extern __shared__ T name[];`, into calls of sifa_emu::launch and sifa_emu::dynamic_shared.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define SIFA_EMULATION 1

// A variant build that runs one dtype (build.py's `dtype`: the deliberately broken kernels, the sm_80
// code paths) instantiates the kernels for that dtype only, in a quarter of the compile time; a call
// with another dtype fails with ATen's "not implemented for" message.
#ifdef SIFA_EMULATED_DTYPE
#include <ATen/Dispatch.h>
#undef AT_DISPATCH_FLOATING_TYPES_AND2
#define AT_DISPATCH_FLOATING_TYPES_AND2(T1, T2, TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(SIFA_EMULATED_DTYPE, __VA_ARGS__))
#endif

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// CUDA's vector types: their alignment is what makes a misaligned vector access undefined (and a
// fault on the GPU); UBSan's alignment check reports it here.
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };

constexpr int warpSize = 32;

namespace sifa_emu {

// What the running fiber (a CUDA thread) sees as its built-in variables.
struct ThreadContext {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadContext& context();

enum class Collective { kSyncWarp, kShflIdx, kShflXor, kShflUp, kShflDown, kBallot, kSyncThreads };
// Blocks the calling lane until every lane named in `mask` reaches the same collective at the same
// source line, then returns this lane's result (the shuffled bits, the ballot, or 0).
uint64_t collective(Collective op, unsigned mask, uint64_t bits, int arg, int width, const char* file, int line);

// The calling block's dynamic shared memory (fresh per block, its bytes poisoned).
void* dynamic_shared(std::size_t alignment);

// How the next launches run: lane order within a block between sync points; the most blocks a
// launch gets (0: as many as it asks for; fewer make the kernels' grid-stride loops iterate); and
// whether to run only the grid's last blocks (0: all), for problems too big to emulate whole; and
// the opt-in shared memory per block the device reports (0: an H100's 227 KB; less makes the
// kernels take their paths for small shared memory).
enum class Schedule { kInOrder = 0, kReversed = 1, kShuffled = 2 };
void configure(Schedule schedule, uint64_t seed, int64_t max_blocks, int64_t only_last_blocks, int64_t shared_limit);
int opt_in_shared_limit();
// Counters since the last configure(): launches, blocks, warp collectives, atomics.
struct Statistics {
  int64_t launches, blocks, collectives, atomics;
};
Statistics statistics();

// One kernel launch with CUDA's checks (block size, shared memory against the function's opt-in).
struct LaunchConfig {
  dim3 grid, block;
  std::size_t shared_bytes;
};
void run_launch(const void* kernel, const LaunchConfig& cfg, const std::function<void()>& body);
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
void count_atomic();
cudaError_t take_last_error();
const char* error_message(cudaError_t e);

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

class Launcher {
 public:
  Launcher(dim3 grid, dim3 block, std::size_t shared_bytes = 0, cudaStream_t = nullptr)
      : cfg_{grid, block, shared_bytes} {}
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), Args&&... args) const {
    // arguments are copied, as a launch copies them to the device
    std::function<void()> body = [kernel, params = std::tuple<std::decay_t<Params>...>(args...)]() {
      std::apply(kernel, params);
    };
    run_launch(reinterpret_cast<const void*>(kernel), cfg_, body);
  }

 private:
  LaunchConfig cfg_;
};
inline Launcher launch(dim3 grid, dim3 block, std::size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  return Launcher(grid, block, shared_bytes, stream);
}

}  // namespace sifa_emu

#define threadIdx (::sifa_emu::context().thread_idx)
#define blockIdx (::sifa_emu::context().block_idx)
#define blockDim (::sifa_emu::context().block_dim)
#define gridDim (::sifa_emu::context().grid_dim)

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sifa_emu::collective(sifa_emu::Collective::kSyncWarp, mask, 0, 0, 32, file, line);
}
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  sifa_emu::collective(sifa_emu::Collective::kSyncThreads, 0xffffffffu, 0, 0, 32, file, line);
}

#define SIFA_EMU_SHUFFLE(NAME, KIND)                                                                      \
  template <class T>                                                                                     \
  T NAME(unsigned mask, T v, int arg, int width = 32, const char* file = __builtin_FILE(),              \
         int line = __builtin_LINE()) {                                                                 \
    return sifa_emu::from_bits<T>(                                                                       \
        sifa_emu::collective(sifa_emu::Collective::KIND, mask, sifa_emu::to_bits(v), arg, width, file, line)); \
  }
SIFA_EMU_SHUFFLE(__shfl_sync, kShflIdx)
SIFA_EMU_SHUFFLE(__shfl_xor_sync, kShflXor)
SIFA_EMU_SHUFFLE(__shfl_up_sync, kShflUp)
SIFA_EMU_SHUFFLE(__shfl_down_sync, kShflDown)
#undef SIFA_EMU_SHUFFLE

inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(
      sifa_emu::collective(sifa_emu::Collective::kBallot, mask, predicate != 0, 0, 32, file, line));
}

template <class T>
T __ldg(const T* p) { return *p; }

inline float __uint_as_float(unsigned bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Fibers of one block interleave only at sync points and blocks run one after another, so a
// read-modify-write is atomic here; the emulator counts them (an atomic is a cost on the GPU).
template <class T>
T atomicAdd(T* address, T value) {
  sifa_emu::count_atomic();
  const T old = *address;
  *address = old + value;
  return old;
}
inline float2 atomicAdd(float2* address, float2 v) {
  sifa_emu::count_atomic();
  const float2 old = *address;
  *address = {old.x + v.x, old.y + v.y};
  return old;
}
inline float4 atomicAdd(float4* address, float4 v) {
  sifa_emu::count_atomic();
  const float4 old = *address;
  *address = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}

inline cudaError_t cudaGetLastError() { return sifa_emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return sifa_emu::error_message(e); }
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  return attr == cudaFuncAttributeMaxDynamicSharedMemorySize
             ? sifa_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value)
             : cudaErrorInvalidValue;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
// The emulated device: an H100 (sm_90): 132 SMs, 227 KB of opt-in shared memory per block (or the
// configured limit).
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = sifa_emu::opt_in_shared_limit(); return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
