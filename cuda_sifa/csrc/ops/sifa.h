// Host-side declarations shared by the op registration and the CPU/CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "sifa_math.h"

namespace sifa {
namespace ops {

// Validates shapes (a safety net for direct torch.ops callers; sifa.ops checks with fuller
// messages first) and returns the call's geometry. `weight_is_scores` selects defagg's layout.
inline math::Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups, bool weight_is_scores) {
  TORCH_CHECK(input.dim() == 5, "sifa: input must be N×C×T×H×W, got ", input.sizes());
  TORCH_CHECK(offset.dim() == 5, "sifa: offset must be N×2K×T×H×W, got ", offset.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "sifa: kernel_size, stride, padding and dilation take two values");
  TORCH_CHECK(stride[0] == 1 && stride[1] == 1, "sifa: only stride 1 is supported, got ", stride);
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0 && dilation[0] > 0 && dilation[1] > 0 &&
                  padding[0] >= 0 && padding[1] >= 0,
              "sifa: invalid kernel_size/dilation/padding");
  math::Geometry g{input.size(0), input.size(1), input.size(2), input.size(3), input.size(4),
                   kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                   dilation[0], dilation[1], groups};
  TORCH_CHECK(groups > 0 && g.C % groups == 0, "sifa: groups (", groups, ") must divide channels (", g.C, ")");
  TORCH_CHECK(offset.sizes() == at::IntArrayRef({g.N, 2 * g.taps(), g.T, g.H, g.W}),
              "sifa: offset must be ", at::IntArrayRef({g.N, 2 * g.taps(), g.T, g.H, g.W}), ", got ", offset.sizes());
  if (weight_is_scores) {
    TORCH_CHECK(weight.sizes() == at::IntArrayRef({g.N, groups * g.taps(), g.T, g.H, g.W}),
                "sifa: scores must be N×G·K×T×H×W, got ", weight.sizes());
  } else {
    TORCH_CHECK(weight.sizes() == at::IntArrayRef({g.C, g.T, g.kh, g.kw}),
                "sifa: weight must be C×T×kh×kw, got ", weight.sizes());
  }
  TORCH_CHECK(offset.scalar_type() == input.scalar_type() && weight.scalar_type() == input.scalar_type(),
              "sifa: input, offset and weight must share a dtype");
  TORCH_CHECK(offset.device() == input.device() && weight.device() == input.device(),
              "sifa: input, offset and weight must be on one device");
  return g;
}

}  // namespace ops
}  // namespace sifa
