"""Argument and frame helpers shared by the SIFA ops, their modules and the reference."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

IntPair = Union[int, Tuple[int, int]]


def pair(v: IntPair) -> Tuple[int, int]:
    """``3`` -> ``(3, 3)``; a pair stays a pair (of ints)."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def previous_frame(x: Tensor) -> Tensor:
    """x[:, :, prev(t)] with prev(t) = t−1 and prev(0) = 0 (time on dim 2): the query frame of the SIFA operator."""
    return torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)
