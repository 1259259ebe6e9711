"""Input checks shared by the video networks (tensors N×C×T×H×W, time on dim 2)."""
from __future__ import annotations

from torch import Tensor

__all__ = ["check_clip_length", "check_video"]


def check_clip_length(net: str, clip_length: int, divisor: int) -> None:
    """Constructor check: the body's temporal strides must divide the clip length."""
    if clip_length < divisor or clip_length % divisor:
        raise ValueError(f"{net}: clip_length must be a positive multiple of {divisor} (the temporal stride), "
                         f"got {clip_length}")


def check_video(net: str, x: Tensor, frames_divisor: int, frames: int | None = None,
                size: tuple[int, int] | None = None) -> None:
    """Forward check of an N×3×L×H×W video: L a multiple of ``frames_divisor`` (and == ``frames``), H×W == ``size``."""
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"{net}: input must be N×3×L×H×W, got shape {tuple(x.shape)}")
    L, H, W = x.shape[2:]
    if L % frames_divisor:
        raise ValueError(f"{net}: the number of frames ({L}) must be divisible by {frames_divisor}")
    if frames is not None and L != frames:
        raise ValueError(f"{net}: built for clip_length={frames} frames, got {L} "
                         "(the SIFA correlation weight depends on it; build with the input's clip_length)")
    if size is not None and (H, W) != tuple(size):
        raise ValueError(f"{net}: image size must be {size[0]}×{size[1]}, got {H}×{W}")
