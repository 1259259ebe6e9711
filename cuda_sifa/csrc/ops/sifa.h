// Host side of the SIFA ops, shared by the CPU and CUDA kernel files: shape checks, the kernels'
// working layout and the op entry points. The three ops are one computation with two parts —
// correlation (scores from the query and the sampled keys) and aggregation (the sampled values
// weighted by the scores) — so each device implements one forward and one backward kernel,
// templated on which parts run: defcor = correlate, defagg = aggregate, sifa_attention = both.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

#include "sifa_math.h"

namespace sifa {
namespace ops {

// The op schemas (registered by sifa.cpp as library `sifa`).
inline void define_schemas(torch::Library& m) {
  m.def("defcor(Tensor input, Tensor offset, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups) -> Tensor");
  m.def("defagg(Tensor input, Tensor offset, Tensor weight, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // defagg(input, offset, defcor(input, offset, weight)) in one pass; returns (output, scores)
  m.def("sifa_attention(Tensor input, Tensor offset, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> (Tensor, Tensor)");
  // Gradients w.r.t. (input, offset, weight); an entry whose output_mask is false comes back empty.
  m.def("_defcor_backward(Tensor grad, Tensor input, Tensor offset, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("_defagg_backward(Tensor grad, Tensor input, Tensor offset, Tensor weight, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // grad_scores: the gradient arriving at the returned scores, None when they were not used
  m.def("_sifa_attention_backward(Tensor grad_out, Tensor? grad_scores, Tensor input, Tensor offset, "
        "Tensor weight, Tensor scores, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

// The dtype the kernels accumulate in and keep scores in: float for half/bfloat16, else the input's.
inline at::ScalarType accumulation_type(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Validates shapes (a safety net for direct torch.ops callers; sifa.ops checks with fuller
// messages first) and returns the call's geometry. `weight_is_scores` selects defagg's layout.
inline math::Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups, bool weight_is_scores) {
  TORCH_CHECK(input.dim() == 5, "sifa: input must be N×C×T×H×W, got ", input.sizes());
  TORCH_CHECK(offset.dim() == 5, "sifa: offset must be N×2K×T×H×W, got ", offset.sizes());
  TORCH_CHECK(weight.dim() == (weight_is_scores ? 5 : 4), "sifa: weight has ", weight.dim(), " dimensions");
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "sifa: kernel_size, stride, padding and dilation take two values");
  TORCH_CHECK(stride[0] == 1 && stride[1] == 1, "sifa: only stride 1 is supported, got ", stride);
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0 && dilation[0] > 0 && dilation[1] > 0 &&
                  padding[0] >= 0 && padding[1] >= 0,
              "sifa: invalid kernel_size/dilation/padding");
  math::Geometry g{input.size(0), input.size(1), input.size(2), input.size(3), input.size(4),
                   kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                   dilation[0], dilation[1], groups};
  // contiguous offsets' strides; Ops::forward and backward put those of the offsets they read
  g.off_p = 1;
  g.off_t = g.plane();
  g.off_c = g.T * g.plane();
  g.off_n = 2 * g.taps() * g.off_c;
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
  // scores (defagg's weight) may also come in the accumulation type, as the fused op returns them
  TORCH_CHECK(offset.scalar_type() == input.scalar_type() &&
                  (weight.scalar_type() == input.scalar_type() ||
                   (weight_is_scores && weight.scalar_type() == accumulation_type(input))),
              "sifa: input, offset and weight must share a dtype");
  TORCH_CHECK(offset.device() == input.device() && weight.device() == input.device(),
              "sifa: input, offset and weight must be on one device");
  return g;
}

// The kernels' working layout: features channels-last (N×T×H×W×C, so channel loops are contiguous
// on the CPU and coalesced on the GPU), scores NCTHW, offsets N×2K×T×H×W in the layout they come in
// (contiguous or channels_last_3d; reads_offset_in_place), the correlation weight T×K×C in the
// accumulation type.
// Scores and their gradients are in the accumulation type (float for half/bfloat16): the fused
// backward then uses the scores the forward computed, not their rounding.
// Undefined tensors are parts a call does not run or gradients nobody asked for.
struct ForwardTensors {
  at::Tensor x;       // N×T×H×W×C
  at::Tensor offset;  // N×2K×T×H×W, read through math::Geometry's offset strides
  at::Tensor weight;  // T×K×C in the accumulation type, when correlating
  at::Tensor scores;  // N×G·K×T×H×W: written when correlating, read otherwise
  at::Tensor out;     // N×T×H×W×C, when aggregating
};

struct BackwardTensors {
  at::Tensor grad_out;     // N×T×H×W×C, when aggregating
  at::Tensor grad_scores;  // N×G·K×T×H×W: gradient arriving at the scores (correlating; optional when fused)
  at::Tensor x, offset, weight, scores;  // as in ForwardTensors; scores read when aggregating
  // outputs; the float/double ones accumulate and are cast by the host
  at::Tensor grad_x;            // N×T×H×W×C accumulator: keys and values (bilinear scatter inside frame t)
  at::Tensor grad_query;        // N×T×H×W×C accumulator: frame t's query gradient, folded onto prev(t)
                                //   (kernels with kQueryGradientBuffer; the others add it into grad_x)
  at::Tensor grad_offset;       // N×2K×T×H×W with the offsets' strides, every element written
  at::Tensor grad_weight;       // N×T×K×C accumulator of per-sample partials, when correlating
  at::Tensor grad_scores_out;   // N×G·K×T×H×W, every element written (defagg's score gradient)
};

// Which parts of the attention a call runs.
struct Parts {
  bool correlate, aggregate;
};

// Calls f(correlate, aggregate) with the parts as compile-time constants (std::bool_constant).
template <typename F>
void with_parts(Parts parts, F&& f) {
  if (parts.correlate && parts.aggregate) {
    f(std::true_type{}, std::true_type{});
  } else if (parts.correlate) {
    f(std::true_type{}, std::false_type{});
  } else {
    f(std::false_type{}, std::true_type{});
  }
}

inline at::Tensor to_channels_last(const at::Tensor& x) { return x.permute({0, 2, 3, 4, 1}).contiguous(); }

// Whether the kernels read N×2K×T×H×W offsets as they are (through math::Geometry's strides): contiguous
// or channels_last_3d offsets, what conv_offset gives in either kind of network (dense, and the pixels
// h·W + w one stride apart). Their gradient is then laid out alike (offset_gradient).
inline bool reads_offset_in_place(const at::Tensor& offset) {
  return offset.is_contiguous() || offset.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// The offsets as the kernels read them: `offset` itself when they can, else a contiguous copy.
inline at::Tensor offset_layout(const at::Tensor& offset) {
  return reads_offset_in_place(offset) ? offset : offset.contiguous();
}

// `g` with the strides of `offset` (offset_layout's result).
inline math::Geometry with_offset_strides(math::Geometry g, const at::Tensor& offset) {
  g.off_n = offset.stride(0);
  g.off_c = offset.stride(1);
  g.off_t = offset.stride(2);
  g.off_p = offset.size(4) > 1 ? offset.stride(4) : offset.size(3) > 1 ? offset.stride(3) : 1;
  return g;
}

// The offsets' gradient: every element written by the kernels (zeros when they do not run), with the
// strides of the offsets they read (sifa/ops/_extension.py fakes the same rule).
inline at::Tensor offset_gradient(const at::Tensor& offset, bool runs) {
  auto grad = at::empty_strided(offset.sizes(), offset.strides(), offset.options());
  return runs ? grad : grad.zero_();
}

// Channels-last in, channels-last out: an input already in channels_last_3d memory format gets its
// feature-shaped results in that format without a copy (sifa/ops/_extension.py fakes the same rule).
inline bool keeps_channels_last(const at::Tensor& input) {
  return !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

inline at::Tensor from_channels_last(const at::Tensor& x_cl, const at::Tensor& like) {
  const auto view = x_cl.permute({0, 4, 1, 2, 3});
  const auto format = keeps_channels_last(like) ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  return view.to(view.options().dtype(like.scalar_type()), false, false, format);
}

inline at::Tensor accumulator(const at::Tensor& like, at::IntArrayRef sizes) {
  return at::zeros(sizes, like.options().dtype(accumulation_type(like)));
}

// weight C×T×kh×kw -> T×K×C, the layout the channel loops read contiguously, in the accumulation
// type: a half or bfloat16 weight is widened once, in the copy the layout needs anyway, instead of
// on every tap of every pixel (the kernels' math is in that type).
inline at::Tensor weight_tkc(const at::Tensor& weight) {
  const auto taps = weight.size(2) * weight.size(3);  // not -1: C may be 0
  // one copy kernel for both (Tensor::to would return a permuted float weight as it is)
  return at::empty({weight.size(1), taps, weight.size(0)}, weight.options().dtype(accumulation_type(weight)))
      .copy_(weight.reshape({weight.size(0), weight.size(1), taps}).permute({1, 2, 0}));
}

// The op entry points of one device. `Kernels` provides
//   static void forward(const ForwardTensors&, const math::Geometry&, Parts);
//   static void backward(const BackwardTensors&, const math::Geometry&, Parts);
//   static constexpr bool kQueryGradientBuffer;  // whether backward wants grad_query
// (the kernels see only non-empty problems).
template <class Kernels>
struct Ops {
  using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& input, const at::Tensor& offset,
                                                    const at::Tensor& weight_or_scores, const math::Geometry& shape,
                                                    Parts parts) {
    ForwardTensors ts;
    ts.x = to_channels_last(input);
    ts.offset = offset_layout(offset);
    const auto g = with_offset_strides(shape, ts.offset);
    const auto acc = input.options().dtype(accumulation_type(input));
    if (parts.correlate) {
      ts.weight = weight_tkc(weight_or_scores);
      ts.scores = at::empty({g.N, g.groups * g.taps(), g.T, g.H, g.W}, acc);
    } else {
      ts.scores = weight_or_scores.to(acc).contiguous();
    }
    if (parts.aggregate) ts.out = at::empty_like(ts.x);
    if (input.numel() > 0) {
      Kernels::forward(ts, g, parts);
    } else if (parts.correlate) {
      ts.scores.zero_();  // C = 0: empty sums
    }
    // the fused op returns the scores its backward will use; defcor returns them in the input's dtype
    return {parts.aggregate ? from_channels_last(ts.out, input) : at::Tensor(),
            parts.aggregate ? ts.scores : ts.scores.to(input.scalar_type())};
  }

  // Gradients w.r.t. (input, offset, weight or scores); an entry whose mask is false comes back empty.
  static Grads backward(const at::Tensor& grad_out, const at::Tensor& grad_scores, const at::Tensor& input,
                        const at::Tensor& offset, const at::Tensor& weight, const at::Tensor& scores,
                        const math::Geometry& shape, Parts parts, std::array<bool, 3> mask) {
    BackwardTensors ts;
    ts.x = to_channels_last(input);
    ts.offset = offset_layout(offset);
    const auto g = with_offset_strides(shape, ts.offset);
    const auto acc = accumulation_type(input);
    if (parts.aggregate) {
      ts.grad_out = to_channels_last(grad_out);
      ts.scores = scores.to(acc).contiguous();
    }
    if (parts.correlate) {
      ts.weight = weight_tkc(weight);
      if (grad_scores.defined()) ts.grad_scores = grad_scores.to(acc).contiguous();
    }
    const bool runs = input.numel() > 0;
    // the kernels write every offset and score gradient; with no channels they are empty sums
    const auto written = [runs](const at::Tensor& like) { return runs ? at::empty_like(like) : at::zeros_like(like); };
    if (mask[0]) ts.grad_x = accumulator(input, ts.x.sizes());
    if (mask[0] && parts.correlate && Kernels::kQueryGradientBuffer) ts.grad_query = accumulator(input, ts.x.sizes());
    if (mask[1]) ts.grad_offset = offset_gradient(ts.offset, runs);
    if (mask[2] && parts.correlate) ts.grad_weight = accumulator(input, {g.N, g.T, g.taps(), g.C});
    if (mask[2] && !parts.correlate) ts.grad_scores_out = written(ts.scores);  // accumulation type
    if (runs) Kernels::backward(ts, g, parts);

    at::Tensor grad_input = input.new_empty({0}), grad_third = weight.new_empty({0});
    if (mask[0]) {
      if (ts.grad_query.defined() && g.T > 0) {
        // frame t's query is frame prev(t): t−1, or 0 for t = 0
        ts.grad_x.narrow(1, 0, 1).add_(ts.grad_query.narrow(1, 0, 1));
        ts.grad_x.narrow(1, 0, g.T - 1).add_(ts.grad_query.narrow(1, 1, g.T - 1));
      }
      grad_input = from_channels_last(ts.grad_x, input);
    }
    if (mask[2] && parts.correlate) {
      // N×T×K×C summed over the batch -> C×T×kh×kw
      grad_third = ts.grad_weight.sum(0).permute({2, 0, 1}).reshape(weight.sizes()).to(weight.scalar_type())
                       .contiguous();
    } else if (mask[2]) {
      grad_third = ts.grad_scores_out.to(weight.scalar_type());
    }
    return {grad_input, mask[1] ? ts.grad_offset : offset.new_empty({0}), grad_third};
  }

  static math::Geometry correlation_geometry(const at::Tensor& input, const at::Tensor& offset,
                                             const at::Tensor& weight, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    TORCH_CHECK(weight.dim() == 4, "sifa: weight must be C×T×kh×kw, got ", weight.sizes());
    return make_geometry(input, offset, weight, {weight.size(2), weight.size(3)}, stride, padding, dilation,
                         groups, false);
  }

  static at::Tensor defcor(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups) {
    const auto g = correlation_geometry(input, offset, weight, stride, padding, dilation, groups);
    return std::get<1>(forward(input, offset, weight, g, {true, false}));
  }

  static at::Tensor defagg(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
    const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
    return std::get<0>(forward(input, offset, scores, g, {false, true}));
  }

  static std::tuple<at::Tensor, at::Tensor> sifa_attention(const at::Tensor& input, const at::Tensor& offset,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           int64_t groups) {
    const auto g = correlation_geometry(input, offset, weight, stride, padding, dilation, groups);
    return forward(input, offset, weight, g, {true, true});
  }

  static Grads defcor_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset,
                               const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
    const auto g = correlation_geometry(input, offset, weight, stride, padding, dilation, groups);
    return backward(at::Tensor(), grad, input, offset, weight, at::Tensor(), g, {true, false}, mask);
  }

  static Grads defagg_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset,
                               const at::Tensor& scores, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               std::array<bool, 3> mask) {
    const auto g = make_geometry(input, offset, scores, kernel_size, stride, padding, dilation, groups, true);
    return backward(grad, at::Tensor(), input, offset, scores, scores, g, {false, true}, mask);
  }

  static Grads sifa_attention_backward(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_scores,
                                       const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                       const at::Tensor& scores, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
    const auto g = correlation_geometry(input, offset, weight, stride, padding, dilation, groups);
    make_geometry(input, offset, scores, {g.kh, g.kw}, stride, padding, dilation, groups, true);
    return backward(grad_out, grad_scores.value_or(at::Tensor()), input, offset, weight, scores, g,
                    {true, true}, mask);
  }
};

}  // namespace ops
}  // namespace sifa

// Registers one device's kernels for every SIFA op of library LIB (the warp emulator of
// tests/emulation registers the CUDA kernels as its own library, defining SIFA_REGISTER_KERNELS first).
#define SIFA_REGISTER_KERNELS_IN(LIB, DEVICE, KERNELS)                                   \
  TORCH_LIBRARY_IMPL(LIB, DEVICE, m) {                                                   \
    using DeviceOps = ::sifa::ops::Ops<KERNELS>;                                         \
    m.impl("defcor", TORCH_FN(DeviceOps::defcor));                                       \
    m.impl("defagg", TORCH_FN(DeviceOps::defagg));                                       \
    m.impl("sifa_attention", TORCH_FN(DeviceOps::sifa_attention));                       \
    m.impl("_defcor_backward", TORCH_FN(DeviceOps::defcor_backward));                    \
    m.impl("_defagg_backward", TORCH_FN(DeviceOps::defagg_backward));                    \
    m.impl("_sifa_attention_backward", TORCH_FN(DeviceOps::sifa_attention_backward));    \
  }
#ifndef SIFA_REGISTER_KERNELS
#define SIFA_REGISTER_KERNELS(DEVICE, KERNELS) SIFA_REGISTER_KERNELS_IN(sifa, DEVICE, KERNELS)
#endif
