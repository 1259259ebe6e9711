"""Clip transforms (docs/design.md §7.3) on torchvision.transforms.v2.

A clip is a T x C x H x W uint8 tensor; v2 transforms draw their random parameters once per call
and apply them to every leading (frame) index alike, so the frames of a clip stay aligned.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = (0.1, 2.0)
# Covers +-3 sigma of the widest blur.
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1


def frames_to_clip(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """H x W x 3 uint8 frames -> T x 3 x H x W uint8 tensor.

    Kept in the frames' channels-last layout: torch's antialiased uint8 resize is about 4x faster on
    it (and gives the same values), and the later steps copy anyway.
    """
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def _check_time_dim(time_dim: str) -> str:
    if time_dim not in ("T", "C"):
        raise ValueError(f"time_dim must be 'T' or 'C', got {time_dim!r}")
    return time_dim


def lay_out(clip: torch.Tensor, time_dim: str, frames: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Frames ``frames`` (default: all) of a T x C x H x W clip, in one copy, as 'T': C x T x H x W (3-D
    networks) or 'C': frames concatenated along channels, (T*C) x H x W."""
    rows = list(range(clip.shape[0])) if frames is None else list(frames)
    if time_dim == "T":
        return clip.permute(1, 0, 2, 3)[:, rows]
    return clip[rows].reshape(-1, *clip.shape[2:])


def _normalize() -> List[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class TrainClipTransform:
    def __init__(self, crop_size: int, no_horizontal_flip: bool = False, rand_augment: bool = False,
                 ra_n: int = 2, ra_m: int = 27, time_dim: str = "T"):
        steps: List[v2.Transform] = [
            v2.RandomResizedCrop(crop_size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
        if rand_augment:
            # Magnitudes 0..30 as in the original's RandAugment.
            steps.append(v2.RandAugment(num_ops=ra_n, magnitude=ra_m, num_magnitude_bins=31))
        else:
            steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                      v2.RandomGrayscale(p=0.2),
                      v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)], p=0.5)]
        if not no_horizontal_flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        self.transform = v2.Compose(steps + _normalize())
        self.time_dim = _check_time_dim(time_dim)

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        return lay_out(self.transform(frames_to_clip(frames)), self.time_dim)


class EvalClipTransform:
    """Resize the shorter side to crop_size, then one of `num_crops` crops.

    num_crops 1: the center crop; 3: left/center/right (landscape) or top/center/bottom (portrait).
    The two steps are also separate, so that the test views of a video resize and normalize each
    frame once.
    """

    def __init__(self, crop_size: int, num_crops: int = 1, time_dim: str = "T"):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.crop_size = crop_size
        self.num_crops = num_crops
        self.resize = v2.Resize(crop_size, antialias=True)
        self.normalize = v2.Compose(_normalize())
        self.time_dim = _check_time_dim(time_dim)

    def crop_origin(self, height: int, width: int, crop_index: int) -> tuple:
        """(top, left) of crop `crop_index` on a resized clip of height x width."""
        center = ((height - self.crop_size) // 2, (width - self.crop_size) // 2)
        if self.num_crops == 1:
            return center
        if width >= height:
            return center[0], [0, center[1], width - self.crop_size][crop_index]
        return [0, center[0], height - self.crop_size][crop_index], center[1]

    def resize_clip(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Step 1, per frame: T x C x H' x W' float frames, the shorter side at crop_size, normalized
        (contiguous: copying crops out of channels-last frames is several times slower)."""
        return self.normalize(self.resize(frames_to_clip(frames))).contiguous()

    def crop_view(self, resized: torch.Tensor, crop_index: int = 0,
                  frames: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Step 2, per view: crop `crop_index` of the resized frames at positions `frames` (default: all),
        laid out: only the crop of those frames is copied, once."""
        top, left = self.crop_origin(resized.shape[-2], resized.shape[-1], crop_index)
        return lay_out(TF.crop(resized, top, left, self.crop_size, self.crop_size), self.time_dim, frames)

    def __call__(self, frames: Sequence[np.ndarray], crop_index: int = 0) -> torch.Tensor:
        return self.crop_view(self.resize_clip(frames), crop_index)
