// Emulation stand-in for ATen's CUDA context: the current stream, and the launch check that turns
// an emulated launch's failure (a CUDA error, divergence, a race, a sanitizer report) into c10::Error.
#pragma once
#include <c10/util/Exception.h>

namespace at {
namespace cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace cuda
}  // namespace at

#define C10_CUDA_KERNEL_LAUNCH_CHECK()                                                       \
  do {                                                                                       \
    const cudaError_t sifa_emu_error = cudaGetLastError();                                   \
    TORCH_CHECK(sifa_emu_error == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(sifa_emu_error)); \
  } while (0)
#define C10_CUDA_CHECK(EXPR)                                                                 \
  do {                                                                                       \
    const cudaError_t sifa_emu_error = (EXPR);                                               \
    TORCH_CHECK(sifa_emu_error == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(sifa_emu_error)); \
  } while (0)
