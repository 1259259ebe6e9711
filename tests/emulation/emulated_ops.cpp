// The CUDA kernels of cuda/sifa_kernel.cu, compiled for the host under the warp emulator and
// registered, through the same Ops<> host side as the real ones, as the CPU kernels of a library of
// their own, SIFA_EMULATED_LIBRARY (sifa_emulated, or a mutant's name; the schemas of `sifa`), plus
// the emulator's controls.
#include <torch/library.h>

#define SIFA_REGISTER_KERNELS(DEVICE, KERNELS) SIFA_REGISTER_KERNELS_IN(SIFA_EMULATED_LIBRARY, CPU, KERNELS)
#include SIFA_KERNEL_SOURCE  // the build's host copy of cuda/sifa_kernel.cu

namespace {

void configure(int64_t schedule, int64_t seed, int64_t max_blocks, int64_t only_last_blocks, int64_t shared_limit) {
  TORCH_CHECK(schedule >= 0 && schedule <= 2, "schedule: 0 in order, 1 reversed, 2 shuffled");
  sifa_emu::configure(static_cast<sifa_emu::Schedule>(schedule), static_cast<uint64_t>(seed), max_blocks,
                      only_last_blocks, shared_limit);
}

std::vector<int64_t> statistics() {
  const auto s = sifa_emu::statistics();
  return {s.launches, s.blocks, s.collectives, s.atomics};
}

}  // namespace

TORCH_LIBRARY(SIFA_EMULATED_LIBRARY, m) {
  sifa::ops::define_schemas(m);
  m.def("configure(int schedule, int seed, int max_blocks, int only_last_blocks=0, int shared_limit=0) -> ()", &configure);
  m.def("statistics() -> int[]", &statistics);
}
