// The SIFA op library. Schemas: sifa.h (define_schemas). Kernels: cpu/sifa_kernel.cpp,
// cuda/sifa_kernel.cu (entry points shared through sifa.h); autocast: autocast/sifa_kernel.cpp;
// autograd and fake tensors: sifa/ops/_extension.py.
#include "sifa.h"

TORCH_LIBRARY(sifa, m) { sifa::ops::define_schemas(m); }
