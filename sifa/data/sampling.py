"""Clip offsets (docs/design.md §7.2).

A clip has `clip_length` frames taken every `num_steps` frames, in each of `num_segments` equal
segments. E = clip_length * num_steps is the extent of one clip, A = duration // num_segments the
segment length. Offsets are 0-based; frame ids are offset + 1, offset + 1 + num_steps, ...
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..errors import UserError


class ClipTooShortError(UserError, ValueError):
    """A video shorter than the extent of one clip (and loop padding is off)."""


def check_clip_fits(duration: int, extent: int, video: str, loop_pad: bool, where: str = "") -> bool:
    """True when a clip of ``extent`` frames fits in the video; False when it does not and loop padding
    wraps it around; else a ClipTooShortError names the video (after ``where``, e.g. its list-file line)."""
    if duration >= extent:
        return True
    if loop_pad:
        return False
    raise ClipTooShortError(f"{where}video '{video}' has {duration} frames, fewer than clip_length x num_steps = "
                            f"{extent}; set loop_pad: true to wrap such videos around")


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def train_offsets(duration: int, clip_length: int, num_steps: int, num_segments: int, video: str = "",
                  loop_pad: bool = False, generator: Optional[torch.Generator] = None) -> List[int]:
    extent = clip_length * num_steps
    segment = duration // num_segments
    if not check_clip_fits(duration, extent, video, loop_pad):
        return [0] * num_segments
    if segment >= extent:
        return [_randint(0, segment - extent, generator) + s * segment for s in range(num_segments)]
    spare = duration - extent
    return [_randint(0, spare // num_segments, generator) + s * spare // num_segments
            for s in range(num_segments)]


def eval_offsets(duration: int, clip_length: int, num_steps: int, num_segments: int, clip_index: int,
                 num_clips: int, video: str = "", loop_pad: bool = False) -> List[int]:
    extent = clip_length * num_steps
    segment = duration // num_segments
    if not check_clip_fits(duration, extent, video, loop_pad):
        return [0] * num_segments
    if segment >= extent:
        return [(segment - extent) * clip_index // num_clips + s * segment for s in range(num_segments)]
    # Second case as in training: each segment's range is (duration - E) // num_segments wide.
    spare = duration - extent
    return [(spare // num_segments) * clip_index // num_clips + s * spare // num_segments
            for s in range(num_segments)]


def clip_frame_ids(offsets: List[int], clip_length: int, num_steps: int, duration: int) -> List[int]:
    """1-based frame ids of all segments; ids past the end wrap around (only with loop padding)."""
    return [(offset + j * num_steps) % duration + 1 for offset in offsets for j in range(clip_length)]
