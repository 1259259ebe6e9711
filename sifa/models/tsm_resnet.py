"""C2D-TSM-ResNet: the Temporal Shift Module baseline (Lin et al., ICCV 2019) on the C2D ResNet.

In every residual branch, before conv1, 1/8 of the channels move one frame forward in time and
1/8 one frame back, zero-padded at the clip's ends: temporal mixing at no parameter or FLOP cost.
The state dict is the plain C2D ResNet's, so the same ImageNet transfer applies.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .registry import register_model
from .sifa_resnet import C2D_RESNET, Bottleneck, C2DResNet

SHIFT_DIVISOR = 8  # 1/8 of the channels shift each way, as in TSM


def temporal_shift(x: Tensor, divisor: int = SHIFT_DIVISOR) -> Tensor:
    """N×C×T×H×W -> same shape: channels [0, C/d) take frame t-1's values (moved forward), channels
    [C/d, 2C/d) take frame t+1's (moved back), the rest stay; frames shifted in from outside are zeros."""
    fold = x.shape[1] // divisor
    out = torch.zeros_like(x)
    out[:, :fold, 1:] = x[:, :fold, :-1]
    out[:, fold:2 * fold, :-1] = x[:, fold:2 * fold, 1:]
    out[:, 2 * fold:] = x[:, 2 * fold:]
    return out


class TSMBottleneck(Bottleneck):
    """C2D bottleneck whose residual branch starts with the temporal shift (the identity path does not shift)."""

    def residual(self, x: Tensor) -> Tensor:
        return super().residual(temporal_shift(x))


@register_model(C2D_RESNET)  # the plain C2D ResNet's state dict, inputs and transfer
def c2d_tsm_resnet50(**kwargs: Any) -> C2DResNet:
    """C2D-TSM-ResNet-50 (blocks [3, 4, 6, 3])."""
    model_args = dict(layers=(3, 4, 6, 3), block=TSMBottleneck)
    return C2DResNet(**dict(model_args, **kwargs))
