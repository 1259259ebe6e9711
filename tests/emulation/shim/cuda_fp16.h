// Emulation stand-in for the half2 type and conversion the SIFA kernels use (tests/emulation/shim/warp_emulator.h).
#pragma once
#include <c10/util/Half.h>

struct __attribute__((aligned(4))) __half2 {
  c10::Half x, y;
};
inline float2 __half22float2(__half2 h) { return {static_cast<float>(h.x), static_cast<float>(h.y)}; }
