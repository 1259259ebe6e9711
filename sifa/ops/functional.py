"""The SIFA operator's Python surface (docs/design.md §2): typed wrappers with input checks.

All functions dispatch to the compiled extension (``torch.ops.sifa``) when it is loaded, else to
the pure-PyTorch reference; ``sifa.ops.backend()`` tells which.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import OpInputError, OpInputTypeError
from . import _extension, reference
from ._utils import IntPair, int_pair, scores_dtype


def backend() -> str:
    """``"extension"`` when the compiled kernels are in use, else ``"reference"``."""
    return "extension" if _extension.use_extension() else "reference"


def cpu_capability() -> str:
    """The instruction set the compiled CPU kernels run with: ``"avx512"``, ``"avx2"`` (with FMA) or
    ``"default"`` (the build's baseline, also on non-x86 CPUs). The best the CPU has is chosen at the
    first kernel call; the environment variable ``SIFA_CPU_CAPABILITY`` (same values) caps it."""
    if not _extension.use_extension():
        raise RuntimeError("sifa.ops.cpu_capability: the compiled extension is not in use (backend "
                           f"{backend()!r}); run `bash make.sh` in the repository root to build it")
    return torch.ops.sifa._cpu_capability()


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The dtype the ops compute in under autocast: float32 on CPU, the autocast dtype on CUDA."""
    device = t.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.float32 if device == "cpu" else torch.get_autocast_dtype(device)


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape) or "scalar"


def _check_common(input: Tensor, offset: Tensor, weight: Tensor, kernel: Tuple[int, int],
                  stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                  groups: int, weight_is_scores: bool, op: str) -> None:
    for name, t in (("input", input), ("offset", offset)):
        if t.dim() != 5:
            raise OpInputError(f"{op}: {name} must be 5-D (N×C×T×H×W), got shape {_shape(t)}")
    if stride != (1, 1):
        raise OpInputError(f"{op}: only stride 1 is supported (the output keeps the input's size), got {stride}")
    if min(kernel) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise OpInputError(f"{op}: kernel size and dilation must be ≥ 1 and padding ≥ 0, got kernel {kernel}, "
                           f"dilation {dilation}, padding {padding}")
    N, C, T, H, W = input.shape
    if offset.shape[1] != 2 * kernel[0] * kernel[1]:
        raise OpInputError(f"{op}: offset must have 2·kh·kw = {2 * kernel[0] * kernel[1]} channels for kernel "
                           f"{kernel}, got shape {_shape(offset)}")
    if offset.shape[0] != N or offset.shape[2:] != input.shape[2:]:
        raise OpInputError(f"{op}: offset batch and T×H×W must equal the input's ({N}, {T}×{H}×{W}), "
                           f"got offset {_shape(offset)} for input {_shape(input)}")
    if groups < 1 or C % groups != 0:
        raise OpInputError(f"{op}: groups ({groups}) must be ≥ 1 and divide the input channels ({C})")
    _check_dtypes(input, offset, weight, weight_is_scores, op)
    for name, t in (("offset", offset), ("weight", weight)):
        if t.device != input.device:
            raise OpInputError(f"{op}: {name} is on {t.device} but input is on {input.device}")
    if not (input.is_floating_point()):
        raise OpInputTypeError(f"{op}: input must be a floating-point tensor, got {input.dtype}")
    if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16) and _autocast_dtype(input) is None:
        raise OpInputTypeError(f"{op}: on the CPU the SIFA ops run in float32 or float64, got {input.dtype}; "
                               f"convert the tensors, or run under torch.autocast('cpu'), which computes these ops "
                               f"in float32")


def _check_dtypes(input: Tensor, offset: Tensor, weight: Tensor, weight_is_scores: bool, op: str) -> None:
    """The kernels' dtype rule (sifa.h, check_inputs): offset and weight in the input's dtype; scores (defagg's
    weight) also in :func:`scores_dtype`, as ``sifa_attention(..., return_scores=True)`` returns them.
    Under autocast every tensor is cast to the autocast dtype first, so any floating dtypes mix."""
    if _autocast_dtype(input) is not None:
        return
    if offset.dtype != input.dtype:
        raise OpInputTypeError(f"{op}: offset has dtype {offset.dtype} but input has {input.dtype}; they must match")
    allowed = {input.dtype, scores_dtype(input)} if weight_is_scores else {input.dtype}
    if weight.dtype not in allowed:
        names = " or ".join(str(d) for d in sorted(allowed, key=str))
        raise OpInputTypeError(f"{op}: weight has dtype {weight.dtype} but must be {names} for input {input.dtype}")


def _cast_for_autocast(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """The reference's counterpart of the extension's autocast rule (autocast/sifa_kernel.cpp)."""
    dtype = _autocast_dtype(tensors[0])
    return tensors if dtype is None else tuple(t.to(dtype) for t in tensors)


def _check_correlation(input: Tensor, offset: Tensor, weight: Tensor, stride: Tuple[int, int],
                       padding: Tuple[int, int], dilation: Tuple[int, int], groups: int, op: str) -> None:
    if weight.dim() != 4:
        raise OpInputError(f"{op}: weight must be 4-D (C×T×kh×kw), got shape {_shape(weight)}")
    kernel = (weight.shape[2], weight.shape[3])
    _check_common(input, offset, weight, kernel, stride, padding, dilation, groups, False, op)
    if tuple(weight.shape[:2]) != (input.shape[1], input.shape[2]):
        raise OpInputError(f"{op}: weight must be C×T×kh×kw = {input.shape[1]}×{input.shape[2]}×kh×kw, "
                           f"got {_shape(weight)}")


def defcor(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 1,
           dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """Deformable correlation (docs/design.md §2.3).

    corr[n, g·K+k, t, h, w] = Σ_{c∈g} weight[c,t,k] · input[n,c,prev(t),h,w] · S(input[n,c,t], p_k)

    Args: input N×C×T×H×W; offset N×2K×T×H×W (channel 2k vertical, 2k+1 horizontal);
    weight C×T×kh×kw (the kernel size is read from it). Returns N×(G·K)×T×H×W.
    """
    stride, padding, dilation = (int_pair(v, name, "defcor") for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    _check_correlation(input, offset, weight, stride, padding, dilation, groups, "defcor")
    if _extension.use_extension():
        return torch.ops.sifa.defcor(input, offset, weight, stride, padding, dilation, groups)
    input, offset, weight = _cast_for_autocast(input, offset, weight)
    return reference.defcor(input, offset, weight, stride, padding, dilation, groups)


def defagg(input: Tensor, offset: Tensor, weight: Tensor, kernel_size: IntPair = 3, stride: IntPair = 1,
           padding: IntPair = 1, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """Deformable aggregation (docs/design.md §2.4).

    out[n, c, t, h, w] = Σ_k weight[n, g(c)·K+k, t, h, w] · S(input[n,c,t], p_k)

    Args: input N×C×T×H×W; offset N×2K×T×H×W; weight (the scores, e.g. defcor's output)
    N×(G·K)×T×H×W. Returns N×C×T×H×W.
    """
    kernel, stride, padding, dilation = (int_pair(v, name, "defagg") for v, name in (
        (kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    _check_common(input, offset, weight, kernel, stride, padding, dilation, groups, True, "defagg")
    N, C, T, H, W = input.shape
    expected = (N, groups * kernel[0] * kernel[1], T, H, W)
    if tuple(weight.shape) != expected:
        raise OpInputError(f"defagg: weight (scores) must be N×G·kh·kw×T×H×W = {'×'.join(map(str, expected))}, "
                           f"got {_shape(weight)}")
    if _extension.use_extension():
        return torch.ops.sifa.defagg(input, offset, weight, kernel, stride, padding, dilation, groups)
    dtype = input.dtype
    input, offset, weight = _cast_for_autocast(input, offset, weight)
    # scores in scores_dtype give an output in the input's dtype, as from the kernels
    return reference.defagg(input, offset, weight, kernel, stride, padding, dilation, groups).to(
        _autocast_dtype(input) or dtype)


def sifa_attention(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 1,
                   dilation: IntPair = 1, groups: int = 1,
                   return_scores: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The SIFA step, fused: ``defagg(input, offset, defcor(input, offset, weight), ...)``.

    One pass samples the deformed taps once for both the correlation and the aggregation, and the
    backward computes all gradients together; arguments as :func:`defcor`. Returns the N×C×T×H×W
    aggregation, and with ``return_scores`` also the N×(G·K)×T×H×W scores (differentiable too;
    float32 for float16/bfloat16 inputs, as the kernels keep them for the backward).
    An input in ``torch.channels_last_3d`` memory format gets its output in that format, copy-free.
    """
    stride, padding, dilation = (int_pair(v, name, "sifa_attention") for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    _check_correlation(input, offset, weight, stride, padding, dilation, groups, "sifa_attention")
    if _extension.use_extension():
        out, scores = torch.ops.sifa.sifa_attention(input, offset, weight, stride, padding, dilation, groups)
    else:
        input, offset, weight = _cast_for_autocast(input, offset, weight)
        out, scores = reference.sifa_attention(input, offset, weight, stride, padding, dilation, groups)
    return (out, scores) if return_scores else out
