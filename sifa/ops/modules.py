"""Module wrappers of the SIFA operator, named and shaped as in the original (docs/design.md §2)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import defagg, defcor, sifa_attention
from ._utils import IntPair, pair


class DefCorFixW(nn.Module):
    """Deformable correlation with a frozen C×T×kh×kw weight filled with 1/C."""

    def __init__(self, in_channels: int, times: int, kernel_size: IntPair, stride: IntPair, padding: IntPair,
                 dilation: IntPair = 1, defcor_groups: int = 1):
        super().__init__()
        kh, kw = pair(kernel_size)
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
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
        self.in_channels, self.times = in_channels, times
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.groups = defagg_groups

    def forward(self, input: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        return defagg(input, offset, weight, self.kernel_size, self.stride, self.padding, self.dilation,
                      self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, times={self.times}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, dilation={self.dilation}")
