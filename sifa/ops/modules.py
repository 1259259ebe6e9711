"""Module wrappers of the SIFA operator, named and shaped as in the original (docs/design.md §2)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import OpInputError
from ._utils import IntPair, int_pair
from .functional import defagg, defcor, sifa_attention


def _check_sizes(module: str, in_channels: int, times: int) -> None:
    for name, value in (("in_channels", in_channels), ("times", times)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OpInputError(f"{module}: {name} must be an int ≥ 1, got {value!r}")


class DefCorFixW(nn.Module):
    """Deformable correlation with a frozen C×T×kh×kw weight filled with 1/C.

    The geometry after ``kernel_size`` may be given by keyword: ``stride`` defaults to 1 (the only
    one the ops take) and ``padding`` to the one keeping the centre tap on its pixel, (dilation·(k−1)+1)//2;
    the original's positional order (``stride, padding, dilation, defcor_groups``) still works.
    """

    def __init__(self, in_channels: int, times: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: Optional[IntPair] = None, dilation: IntPair = 1, defcor_groups: int = 1):
        super().__init__()
        _check_sizes("DefCorFixW", in_channels, times)  # the weight is filled with 1/in_channels
        kh, kw = int_pair(kernel_size, "kernel_size", "DefCorFixW")
        self.stride, self.dilation = (int_pair(v, name, "DefCorFixW") for v, name in
                                      ((stride, "stride"), (dilation, "dilation")))
        self.padding = ((self.dilation[0] * (kh - 1) + 1) // 2, (self.dilation[1] * (kw - 1) + 1) // 2) \
            if padding is None else int_pair(padding, "padding", "DefCorFixW")
        self.groups = defcor_groups
        self.weight = nn.Parameter(torch.full((in_channels, times, kh, kw), 1.0 / in_channels),
                                   requires_grad=False)

    def forward(self, input: Tensor, offset: Tensor) -> Tensor:
        return defcor(input, offset, self.weight.to(input.dtype), self.stride, self.padding, self.dilation,
                      self.groups)

    def attend(self, input: Tensor, offset: Tensor) -> Tensor:
        """The SIFA step with this module's weight and sampling: ``defagg(input, offset, self(input, offset))``
        computed by the fused :func:`sifa_attention` (the scores are not kept)."""
        return sifa_attention(input, offset, self.weight.to(input.dtype), self.stride, self.padding,
                              self.dilation, self.groups)

    def extra_repr(self) -> str:
        C, T, kh, kw = self.weight.shape
        return f"{C}, times={T}, kernel_size=({kh}, {kw}), padding={self.padding}, dilation={self.dilation}"


class DefAgg(nn.Module):
    """Deformable aggregation of the input's K×K deformed taps, weighted by given scores."""

    def __init__(self, in_channels: int, times: int, kernel_size: IntPair, stride: IntPair, padding: IntPair,
                 dilation: IntPair = 1, defagg_groups: int = 1):
        super().__init__()
        _check_sizes("DefAgg", in_channels, times)
        self.in_channels, self.times = in_channels, times
        self.kernel_size, self.stride, self.padding, self.dilation = (int_pair(v, name, "DefAgg") for v, name in (
            (kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
        self.groups = defagg_groups

    def forward(self, input: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        if input.dim() == 5 and tuple(input.shape[1:3]) != (self.in_channels, self.times):
            raise OpInputError(f"DefAgg({self.in_channels}, times={self.times}): input has {input.shape[1]} channels "
                               f"and {input.shape[2]} frames (shape {tuple(input.shape)})")
        return defagg(input, offset, weight, self.kernel_size, self.stride, self.padding, self.dilation,
                      self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, times={self.times}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, dilation={self.dilation}")
