// Schemas of the SIFA ops. Kernels: cpu/sifa_kernel.cpp, cuda/sifa_kernel.cu (entry points shared
// through sifa.h); autocast: autocast/sifa_kernel.cpp; autograd and fake tensors: sifa/ops/_extension.py.
#include <torch/library.h>

TORCH_LIBRARY(sifa, m) {
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
