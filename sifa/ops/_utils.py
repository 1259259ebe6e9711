"""Argument and frame helpers shared by the SIFA ops, their modules, the reference and the networks."""
from __future__ import annotations

import operator
from typing import Any, Tuple, Union

import torch
from torch import Tensor

from ..errors import OpInputTypeError

IntPair = Union[int, Tuple[int, int]]


def int_pair(value: Any, name: str = "value", op: str = "sifa") -> Tuple[int, int]:
    """``3`` -> ``(3, 3)``; a pair of ints (height, width) stays; anything else is a TypeError naming ``name``."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    try:
        if len(items) != 2 or any(isinstance(v, bool) for v in items):
            raise TypeError
        return operator.index(items[0]), operator.index(items[1])
    except TypeError:
        raise OpInputTypeError(f"{op}: {name} must be an int or a pair of ints (height, width), "
                               f"got {value!r}") from None


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out channels_last_3d (and not also contiguous): the kernels' rule for keeping the
    layout (sifa.h, keeps_channels_last)."""
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def shift_frames(x: Tensor, frames: int) -> Tensor:
    """``x`` moved ``frames`` along time (dim 2; negative: towards frame 0), zeros where nothing arrives. One
    constant pad with a negative side (a crop), whose output and gradient keep ``x``'s memory format (slicing's
    gradient would come back NCTHW-contiguous)."""
    return torch.nn.functional.pad(x, (0, 0, 0, 0, frames, -frames))


def previous_frame(x: Tensor) -> Tensor:
    """x[:, :, prev(t)] with prev(t) = t−1 and prev(0) = 0 (time on dim 2): the query frame of the SIFA operator.
    Channels-last ``x`` gets a channels-last result and gradient (:func:`shift_frames`)."""
    if not is_channels_last(x):
        return torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)
    pad = torch.nn.functional.pad
    T = x.shape[2]
    first = pad(pad(x, (0, 0, 0, 0, 0, 1 - T)), (0, 0, 0, 0, 0, T - 1))  # x[:, :, 0] at frame 0, zeros after
    return shift_frames(x, 1) + first


def scores_dtype(input: Tensor) -> torch.dtype:
    """The dtype the kernels accumulate in and keep the fused op's scores in (sifa.h, accumulation_type):
    float64 for float64 input, else float32."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32
