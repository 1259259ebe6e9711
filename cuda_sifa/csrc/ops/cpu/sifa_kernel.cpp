// CPU kernels of the SIFA ops (sifa_kernel.inc), compiled twice — for the build's baseline (x86-64:
// SSE2) and, on x86-64, for AVX2 with FMA — and chosen at run time, as ATen does with CPU_CAPABILITY:
// one build stays portable and uses the vector units the CPU has. There is no AVX-512 build: on the
// Zen 4 it was measured on, its fused forward+backward ran 1.3× slower than AVX2's with 512-bit
// vectors and no faster with 256-bit ones (docs/benchmarks.md).
//
// How: the kernel source is included once per capability in this one file, each time in its own
// namespace, the AVX2 one under a target pragma that applies to the functions *defined* after it. The
// kernels' own functions and lambdas get its instruction set; inline functions and templates of the
// headers (sifa_math.h, ATen, the standard library), all defined above the pragma, keep the baseline
// one wherever they are emitted out of line, and are inlined into the kernels and vectorised there.
// So no AVX instruction can reach code that the linker shares with the baseline path (the ODR
// hazard of compiling whole files with -mavx2), and setup.py needs no per-file flags. Function
// multiversioning (target_clones) would pick the variant by itself in an ifunc resolver: no way to
// force the baseline for testing, and the kernels' hot loops sit in lambdas, which its clones do not
// cover.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../sifa.h"

#if defined(__x86_64__) && defined(__GNUC__)  // GCC and Clang
#define SIFA_CPU_X86_CAPABILITIES
#define SIFA_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define SIFA_TARGET_PUSH(isa) SIFA_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define SIFA_TARGET_POP() SIFA_PRAGMA(clang attribute pop)
#else
#define SIFA_TARGET_PUSH(isa) SIFA_PRAGMA(GCC push_options) SIFA_PRAGMA(GCC target(isa))
#define SIFA_TARGET_POP() SIFA_PRAGMA(GCC pop_options)
#endif
#endif

namespace sifa {
namespace ops {

namespace cpu_default {
namespace {
#include "sifa_kernel.inc"
}  // namespace
}  // namespace cpu_default

#ifdef SIFA_CPU_X86_CAPABILITIES
SIFA_TARGET_PUSH("avx2,fma")
namespace cpu_avx2 {
namespace {
#include "sifa_kernel.inc"
}  // namespace
}  // namespace cpu_avx2
SIFA_TARGET_POP()
#endif

namespace {

// The capabilities the kernels are compiled for, in increasing order, and their names.
enum class Capability { kDefault, kAvx2 };
constexpr const char* kCapabilityNames[] = {"default", "avx2"};

// The best capability this CPU runs (__builtin_cpu_supports also checks that the OS saves the
// wider registers).
Capability best_supported() {
#ifdef SIFA_CPU_X86_CAPABILITIES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

// The capability the kernels run with, chosen at the first call. SIFA_CPU_CAPABILITY (default,
// avx2) caps it, as ATEN_CPU_CAPABILITY caps ATen's: a capability the CPU lacks falls back to the
// best one it has.
Capability selected_capability() {
  static const Capability selected = [] {
    const Capability best = best_supported();
    const char* requested = std::getenv("SIFA_CPU_CAPABILITY");
    if (requested == nullptr || *requested == '\0') return best;
    const auto* names_end = std::end(kCapabilityNames);
    const auto* name = std::find_if(std::begin(kCapabilityNames), names_end,
                                    [&](const char* n) { return std::strcmp(n, requested) == 0; });
    TORCH_CHECK(name != names_end, "SIFA_CPU_CAPABILITY must be default or avx2, got '", requested, "'");
    return std::min(best, static_cast<Capability>(name - std::begin(kCapabilityNames)));
  }();
  return selected;
}

// Calls f with the selected capability's Kernels (an empty struct of static functions).
template <typename F>
void with_capability(F&& f) {
  switch (selected_capability()) {
#ifdef SIFA_CPU_X86_CAPABILITIES
    case Capability::kAvx2:
      return f(cpu_avx2::Kernels{});
#endif
    default:
      return f(cpu_default::Kernels{});
  }
}

struct CpuKernels {
  // frame t's query gradient goes to a buffer folded onto prev(t) afterwards: frames run in
  // parallel, and prev(t) is another thread's frame
  static constexpr bool kQueryGradientBuffer = true;
  static void forward(const ForwardTensors& ts, const math::Geometry& g, Parts parts) {
    with_capability([&](auto kernels) { decltype(kernels)::forward(ts, g, parts); });
  }
  static void backward(const BackwardTensors& ts, const math::Geometry& g, Parts parts) {
    with_capability([&](auto kernels) { decltype(kernels)::backward(ts, g, parts); });
  }
};

}  // namespace

SIFA_REGISTER_KERNELS(CPU, CpuKernels)

TORCH_LIBRARY_FRAGMENT(sifa, m) {
  // the instruction set the CPU kernels run with: default or avx2 (sifa.ops.cpu_capability)
  m.def("_cpu_capability() -> str",
        [] { return std::string(kCapabilityNames[static_cast<int>(selected_capability())]); });
}

}  // namespace ops
}  // namespace sifa
