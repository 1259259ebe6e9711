"""FLOP formulas of the compiled SIFA ops for ``torch.utils.flop_counter.FlopCounterMode``.

Convention (FLOPs = 2 × multiply-adds, as FlopCounterMode counts convolutions and matmuls): for an
input N×C×T×H×W and a kh×kw kernel (K = kh·kw taps) each of ``sifa.defcor`` and ``sifa.defagg``
costs 10·N·C·T·H·W·K FLOPs — per channel and tap one bilinear sample (4 multiply-adds = 8 FLOPs)
plus one multiply-add (2 FLOPs) for the correlation product resp. the aggregation. ``sifa.sifa_attention``
(both parts, fused) counts as the two ops, so fusing changes no complexity figure. Coordinate
arithmetic, the frozen weight's scaling and the backward ops are not counted.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from ..errors import ExtensionNotBuiltError
from .functional import backend

FLOPS_PER_CHANNEL_TAP = 10  # 8 for the bilinear sample + 2 for the product / aggregation


def sifa_op_flops(input_shape: Sequence[int], kernel_size: Sequence[int]) -> int:
    """FLOPs of one defcor or defagg call on an N×C×T×H×W input with a kh×kw kernel."""
    N, C, T, H, W = input_shape
    return FLOPS_PER_CHANNEL_TAP * N * C * T * H * W * kernel_size[0] * kernel_size[1]


def register_flop_formulas() -> None:
    """Register the formulas on ``torch.ops.sifa.*`` (idempotent; needs the extension).

    Register before creating the FlopCounterMode: it copies the registry when constructed.
    """
    if backend() != "extension":
        raise ExtensionNotBuiltError("FLOP counting of the SIFA ops needs the compiled extension (torch.ops.sifa), "
                                     "which is not loaded; run `bash make.sh` in the repository root to build it")
    if torch.ops.sifa.defcor in flop_registry:
        return

    @register_flop_formula(torch.ops.sifa.defcor)
    def defcor_flops(input_shape, offset_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        return sifa_op_flops(input_shape, weight_shape[2:])  # weight C×T×kh×kw

    @register_flop_formula(torch.ops.sifa.defagg)
    def defagg_flops(input_shape, offset_shape, weight_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
        return sifa_op_flops(input_shape, kernel_size)

    @register_flop_formula(torch.ops.sifa.sifa_attention)
    def sifa_attention_flops(input_shape, offset_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * sifa_op_flops(input_shape, weight_shape[2:])  # correlation + aggregation
