// Autocast rules: the SIFA ops run in float32 on the CPU (where the kernels have no reduced
// precision path) and in the autocast dtype on CUDA, so mixed-dtype inputs never reach a kernel.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace sifa {
namespace ops {
namespace {

template <c10::DeviceType device>
at::ScalarType compute_dtype() {
  return device == c10::DeviceType::CPU ? at::kFloat : at::autocast::get_autocast_dtype(device);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor defcor_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sifa::defcor", "").typed<decltype(defcor_autocast<key, device>)>();
  const auto dtype = compute_dtype<device>();
  return op.call(at::autocast::cached_cast(dtype, input, device), at::autocast::cached_cast(dtype, offset, device),
                 at::autocast::cached_cast(dtype, weight, device), stride, padding, dilation, groups);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor defagg_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& scores,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sifa::defagg", "").typed<decltype(defagg_autocast<key, device>)>();
  const auto dtype = compute_dtype<device>();
  return op.call(at::autocast::cached_cast(dtype, input, device), at::autocast::cached_cast(dtype, offset, device),
                 at::autocast::cached_cast(dtype, scores, device), kernel_size, stride, padding, dilation, groups);
}

template <c10::DispatchKey key, c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor> sifa_attention_autocast(const at::Tensor& input, const at::Tensor& offset,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sifa::sifa_attention", "")
                       .typed<decltype(sifa_attention_autocast<key, device>)>();
  const auto dtype = compute_dtype<device>();
  return op.call(at::autocast::cached_cast(dtype, input, device), at::autocast::cached_cast(dtype, offset, device),
                 at::autocast::cached_cast(dtype, weight, device), stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(sifa, AutocastCPU, m) {
  m.impl("defcor", TORCH_FN((defcor_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>)));
  m.impl("defagg", TORCH_FN((defagg_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>)));
  m.impl("sifa_attention", TORCH_FN((sifa_attention_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>)));
}

TORCH_LIBRARY_IMPL(sifa, AutocastCUDA, m) {
  m.impl("defcor", TORCH_FN((defcor_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>)));
  m.impl("defagg", TORCH_FN((defagg_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>)));
  m.impl("sifa_attention", TORCH_FN((sifa_attention_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>)));
}

}  // namespace ops
}  // namespace sifa
