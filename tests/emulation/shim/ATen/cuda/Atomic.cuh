// Emulation stand-in for ATen's CUDA atomics (tests/emulation/shim/warp_emulator.h).
#pragma once
template <class T, class V>
T gpuAtomicAdd(T* address, V value) {
  return atomicAdd(address, static_cast<T>(value));
}
