"""Loading of the compiled kernels (``sifa/_C*.so``) and their Python-side registrations.

The C++ library declares the ``sifa::`` op schemas and their CPU/CUDA/autocast kernels; here we
add what torch.compile and autograd need: fake (meta) implementations and the backward formulas.
"""
from __future__ import annotations

import functools
import importlib.machinery
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..errors import ExtensionNotBuiltError
from ._utils import is_channels_last, scores_dtype

_ENV = "SIFA_OPS_BACKEND"


def _library_path() -> Optional[Path]:
    pkg = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = pkg / f"_C{suffix}"
        if candidate.exists():
            return candidate
    return None


_chosen: Optional[bool] = None  # resolved once; a plain global so torch.compile reads it as a constant


def use_extension() -> bool:
    """Whether ``torch.ops.sifa`` is loaded and chosen (``SIFA_OPS_BACKEND`` overrides the choice)."""
    global _chosen
    if _chosen is None:
        _chosen = _choose()
    return _chosen


def reset() -> None:
    """Forget the choice, so that the next call reads ``SIFA_OPS_BACKEND`` again."""
    global _chosen
    _chosen = None


def _choose() -> bool:
    choice = os.environ.get(_ENV, "").strip().lower()
    if choice not in ("", "extension", "reference"):
        raise ValueError(f"{_ENV} must be 'extension' or 'reference', got {choice!r}")
    if choice == "reference":
        return False
    path = _library_path()
    error = None
    if path is not None:
        try:
            if not hasattr(torch.ops.sifa, "defcor"):
                torch.ops.load_library(str(path))
                _register_python_side()
            return True
        except (OSError, RuntimeError) as exc:  # built against another PyTorch, missing CUDA libs, ...
            error = f"{path.name} failed to load: {exc}"
    reason = error or "the compiled SIFA extension is not built"
    if choice == "extension":
        raise ExtensionNotBuiltError(f"{_ENV}=extension but {reason}; run `bash make.sh` in the repository root")
    warnings.warn(f"{reason}; using the pure-PyTorch reference of the SIFA ops (slow). "
                  "Run `bash make.sh` to build the kernels.", RuntimeWarning, stacklevel=3)
    return False


def _kernel_len(w: torch.Tensor) -> int:
    return w.shape[2] * w.shape[3]


def _like_features(input: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A new tensor shaped and laid out as the kernels return feature maps: channels_last_3d when
    ``input`` is in that format (and not also contiguous), else contiguous (sifa.h, keeps_channels_last)."""
    return torch.empty(input.shape, dtype=dtype or input.dtype, device=input.device,
                       memory_format=torch.channels_last_3d if is_channels_last(input) else torch.contiguous_format)


def _offset_gradient_like(offset: torch.Tensor) -> torch.Tensor:
    """A new tensor laid out as the kernels return the offsets' gradient: with the offsets' strides when they
    read them in place (contiguous or channels_last_3d offsets), else contiguous (sifa.h, reads_offset_in_place
    and offset_gradient)."""
    if offset.is_contiguous() or offset.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.empty_strided(offset.shape, offset.stride(), dtype=offset.dtype, device=offset.device)
    return offset.new_empty(offset.shape)


def _register_python_side() -> None:
    lib = "sifa::"

    def _scores_fake(input, weight, groups, dtype=None):
        N, C, T, H, W = input.shape
        return input.new_empty((N, groups * _kernel_len(weight), T, H, W), dtype=dtype)

    @torch.library.register_fake(lib + "defcor")
    def _(input, offset, weight, stride, padding, dilation, groups):
        return _scores_fake(input, weight, groups)

    @torch.library.register_fake(lib + "defagg")
    def _(input, offset, weight, kernel_size, stride, padding, dilation, groups):
        return _like_features(input)

    @torch.library.register_fake(lib + "sifa_attention")
    def _(input, offset, weight, stride, padding, dilation, groups):
        # the fused op keeps its scores in the kernels' accumulation type
        return _like_features(input), _scores_fake(input, weight, groups, scores_dtype(input))

    def _grads_fake(input, offset, weight, mask):
        return (_like_features(input) if mask[0] else input.new_empty((0,)),
                _offset_gradient_like(offset) if mask[1] else offset.new_empty((0,)),
                weight.new_empty(weight.shape if mask[2] else (0,)))

    @torch.library.register_fake(lib + "_defcor_backward")
    def _(grad, input, offset, weight, stride, padding, dilation, groups, mask):
        return _grads_fake(input, offset, weight, mask)

    @torch.library.register_fake(lib + "_defagg_backward")
    def _(grad, input, offset, weight, kernel_size, stride, padding, dilation, groups, mask):
        return _grads_fake(input, offset, weight, mask)

    @torch.library.register_fake(lib + "_sifa_attention_backward")
    def _(grad_out, grad_scores, input, offset, weight, scores, stride, padding, dilation, groups, mask):
        return _grads_fake(input, offset, weight, mask)

    def _setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])
        ctx.args = inputs[3:]

    def _grads(ctx, results):
        return tuple(g if need else None for g, need in zip(results, ctx.needs_input_grad[:3])) \
            + (None,) * len(ctx.args)

    def _defcor_backward(ctx, grad):
        mask = list(ctx.needs_input_grad[:3])
        return _grads(ctx, torch.ops.sifa._defcor_backward(grad, *ctx.saved_tensors, *ctx.args, mask))

    def _defagg_backward(ctx, grad):
        mask = list(ctx.needs_input_grad[:3])
        return _grads(ctx, torch.ops.sifa._defagg_backward(grad, *ctx.saved_tensors, *ctx.args, mask))

    def _attention_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3], output[1])  # the scores: the backward needs them, they are small
        ctx.args = inputs[3:]
        ctx.set_materialize_grads(False)  # unused scores then send None, not a tensor of zeros

    def _attention_backward(ctx, grad_out, grad_scores):
        mask = list(ctx.needs_input_grad[:3])
        input, offset, weight, scores = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(input)
        return _grads(ctx, torch.ops.sifa._sifa_attention_backward(
            grad_out, grad_scores, input, offset, weight, scores, *ctx.args, mask))

    torch.library.register_autograd(lib + "defcor", _defcor_backward, setup_context=_setup)
    torch.library.register_autograd(lib + "defagg", _defagg_backward, setup_context=_setup)
    torch.library.register_autograd(lib + "sifa_attention", _attention_backward, setup_context=_attention_setup)

    # The backward ops have no derivative of their own: differentiating through one (double backward,
    # e.g. a gradient penalty) must fail loudly, not return PyTorch's silent default.
    for name in ("_defcor_backward", "_defagg_backward", "_sifa_attention_backward"):
        torch.library.register_autograd(lib + name, functools.partial(_no_double_backward, lib + name))


def _no_double_backward(op: str, ctx, *grads):
    raise RuntimeError(f"{op}: double backward (a gradient of the SIFA ops' gradient) is not implemented by the "
                       "compiled kernels; SIFA_OPS_BACKEND=reference differentiates twice, slowly")
