// Emulation stand-in: the emulated device is the CPU, so there is no device to switch to.
#pragma once
#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10
