"""Clip transforms (docs/design.md §7.3) on torchvision.transforms.v2.

A clip is a T x C x H x W uint8 tensor; v2 transforms draw their random parameters once per call
and apply them to every leading (frame) index alike, so the frames of a clip stay aligned.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = (0.1, 2.0)
# Covers +-3 sigma of the widest blur.
BLUR_KERNEL = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1


def _fork_with_one_opencv_thread() -> None:
    """Forked children (fork-started DataLoader workers) start with one OpenCV thread and no thread pool.

    A child must not change OpenCV's thread count itself: it holds a copy of its parent's thread
    pool, and cv2.setNumThreads waits for the pool's threads, which were not forked, forever. So the
    parent drops to one thread just before each fork and takes its threads back just after.
    """
    saved = []
    os.register_at_fork(before=lambda: (saved.append(cv2.getNumThreads()), cv2.setNumThreads(1)),
                        after_in_parent=lambda: cv2.setNumThreads(saved.pop()))


_fork_with_one_opencv_thread()


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


def normalize_clips(clips: torch.Tensor, time_dim: str = "T") -> torch.Tensor:
    """A batch of uint8 clips, N x C x T x H x W ('T') or N x (T*C) x H x W ('C'), as the float32 input of
    the network, on the clips' device: scaled to [0, 1] and normalized with the ImageNet statistics, by
    the same operations as the evaluation's transform (so the same numbers)."""
    if clips.dtype != torch.uint8:
        raise TypeError(f"normalize_clips takes uint8 clips, got {clips.dtype}")
    shape = (1, 3, 1, 1, 1) if _check_time_dim(time_dim) == "T" else (1, 1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=clips.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=clips.device).view(shape)
    grouped = clips if time_dim == "T" else clips.unflatten(1, (-1, 3))
    out = grouped.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
    return out if time_dim == "T" else out.flatten(1, 2)


def _lut(values: torch.Tensor) -> np.ndarray:
    """A 256-entry uint8 lookup table from float values of 0..255, clamped and truncated as torchvision's
    uint8 colour operations do."""
    return values.clamp_(0, 255).to(torch.uint8).numpy()


class _OpenCVColourJitter:
    """The colour steps of the original's recipe, with torchvision's parameter distributions, on a
    T x H x W x 3 uint8 array through OpenCV (10-20x faster than torchvision's on tensors).

    Brightness and contrast are lookup tables computed as torchvision computes them (the same values,
    contrast's per-frame mean grey from OpenCV's luma, which rounds where torchvision truncates); saturation
    and grayscale use OpenCV's luma (at most 1 level apart); the hue shift goes through OpenCV's 8-bit HSV
    (a few levels apart, see tests/test_data.py); the blur is OpenCV's 13-tap Gaussian with torchvision's
    kernel and reflected border (at most 1 level apart).
    """

    def __init__(self):
        jitter = transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)
        self.ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        self.identity = torch.arange(256, dtype=torch.float32)

    def _grey(self, clip: np.ndarray) -> np.ndarray:
        """T x H x W luma of a T x H x W x 3 clip."""
        return cv2.cvtColor(clip.reshape(-1, *clip.shape[2:]), cv2.COLOR_RGB2GRAY).reshape(clip.shape[:3])

    def brightness(self, clip: np.ndarray, factor: float) -> np.ndarray:
        return cv2.LUT(clip, _lut(self.identity * factor))

    def contrast(self, clip: np.ndarray, factor: float) -> np.ndarray:
        means = self._grey(clip).reshape(len(clip), -1).mean(axis=1, dtype=np.float64)
        for frame, mean in zip(clip, means):
            cv2.LUT(frame, _lut(self.identity * factor + float(mean) * (1.0 - factor)), dst=frame)
        return clip

    def saturation(self, clip: np.ndarray, factor: float) -> np.ndarray:
        # addWeighted rounds; torchvision truncates: -0.5 makes it truncate.
        return cv2.addWeighted(clip, factor, self.grayscale(clip), 1.0 - factor, -0.5)

    def hue(self, clip: np.ndarray, factor: float) -> np.ndarray:
        shape = clip.shape
        hsv = cv2.cvtColor(clip.reshape(-1, *shape[2:]), cv2.COLOR_RGB2HSV_FULL)  # hue 0..255 for 0..360 degrees
        shift = np.arange(256)
        table = np.stack([(shift + round(factor * 256)) % 256, shift, shift], axis=1).astype(np.uint8)
        return cv2.cvtColor(cv2.LUT(hsv, table.reshape(256, 1, 3)), cv2.COLOR_HSV2RGB_FULL).reshape(shape)

    def jitter(self, clip: np.ndarray) -> np.ndarray:
        """torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1): the four in a random order, random factors."""
        order, *factors = transforms.ColorJitter.get_params(*self.ranges)
        steps = (self.brightness, self.contrast, self.saturation, self.hue)
        for index in order.tolist():
            clip = steps[index](clip, factors[index])
        return clip

    def grayscale(self, clip: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(self._grey(clip).reshape(-1, clip.shape[2]), cv2.COLOR_GRAY2RGB).reshape(clip.shape)

    @staticmethod
    def blur(clip: np.ndarray, sigma: float) -> np.ndarray:
        for frame in clip:  # per frame: the border reflects within each frame
            cv2.GaussianBlur(frame, (BLUR_KERNEL, BLUR_KERNEL), sigma, dst=frame, borderType=cv2.BORDER_REFLECT_101)
        return clip


class TrainClipTransform:
    """The training augmentation of one clip, drawn once and applied to all its frames alike: a random
    resized crop (scale 0.2-1, aspect 3/4-4/3), then RandAugment, or the original's colour steps (colour
    jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale with p 0.2, Gaussian blur sigma 0.1-2 with p 0.5), then a
    horizontal flip with p 0.5.

    Returns the clip as uint8, laid out (``time_dim``): the training loop normalizes the batch on its device
    (``normalize_clips``), so the workers, collation and host-to-device copy move a quarter of the bytes.
    Only the crop is copied out of the decoded frames; the colour steps run on uint8 through OpenCV.
    """

    SCALE = (0.2, 1.0)
    RATIO = (3 / 4, 4 / 3)

    def __init__(self, crop_size: int, no_horizontal_flip: bool = False, rand_augment: bool = False,
                 ra_n: int = 2, ra_m: int = 27, time_dim: str = "T", colour: bool = True,
                 min_crop_scale: Optional[float] = None):
        """``colour`` False: no colour steps (``augment_on_device``: DeviceColourAugment applies them, or
        ``colour_augment: false``). ``min_crop_scale``: the crop's smallest area, a fraction of the frame."""
        self.crop_size = crop_size
        self.min_crop_scale = min_crop_scale  # None: SCALE's
        self.with_colour = colour
        self.flip = not no_horizontal_flip
        # Magnitudes 0..30 as in the original's RandAugment.
        self.rand_augment = v2.RandAugment(num_ops=ra_n, magnitude=ra_m, num_magnitude_bins=31) if rand_augment \
            else None
        self.colour = _OpenCVColourJitter()
        self.time_dim = _check_time_dim(time_dim)

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        if cv2.getNumThreads() != 1 and get_worker_info() is not None:
            # a spawned worker (a forked one has one thread already): the workers share the cores, as torch's do
            cv2.setNumThreads(1)
        height, width = frames[0].shape[:2]
        scale = [self.SCALE[0] if self.min_crop_scale is None else self.min_crop_scale, self.SCALE[1]]
        top, left, h, w = transforms.RandomResizedCrop.get_params(torch.empty(0, height, width), scale,
                                                                 list(self.RATIO))
        clip = TF.resize(frames_to_clip([frame[top:top + h, left:left + w] for frame in frames]),
                         [self.crop_size, self.crop_size], antialias=True)
        if self.rand_augment is not None:
            clip = self.rand_augment(clip)
        clip = np.ascontiguousarray(clip.permute(0, 2, 3, 1).numpy())  # T x H x W x 3: the resize's own layout
        if self.rand_augment is None and self.with_colour:
            clip = self._colour(clip)
        if self.flip and torch.rand(1).item() < 0.5:
            clip = cv2.flip(clip.reshape(-1, *clip.shape[2:]), 1).reshape(clip.shape)
        return self._lay_out(clip)

    def _colour(self, clip: np.ndarray) -> np.ndarray:
        if torch.rand(1).item() < 0.8:
            clip = self.colour.jitter(clip)
        if torch.rand(1).item() < 0.2:
            clip = self.colour.grayscale(clip)
        if torch.rand(1).item() < 0.5:
            clip = self.colour.blur(clip, torch.empty(1).uniform_(*BLUR_SIGMA).item())
        return clip

    def _lay_out(self, clip: np.ndarray) -> torch.Tensor:
        """A T x H x W x 3 array as lay_out's 'T' or 'C' layout, split into planes by OpenCV (several times
        faster than a strided copy)."""
        frames, height, width = clip.shape[:3]
        out = np.empty((3, frames, height, width) if self.time_dim == "T" else (frames, 3, height, width), np.uint8)
        for t, frame in enumerate(clip):
            (out[:, t] if self.time_dim == "T" else out[t])[...] = cv2.split(frame)
        return torch.from_numpy(out if self.time_dim == "T" else out.reshape(-1, height, width))


class DeviceColourAugment:
    """``augment_on_device``: the original recipe's colour steps (colour jitter 0.4/0.4/0.4/0.1 with p 0.8,
    grayscale with p 0.2, Gaussian blur sigma 0.1-2 with p 0.5) as torchvision's own transforms, on a batch
    of uint8 clips on the training device after collation: drawn per clip, as the workers would."""

    def __init__(self, time_dim: str = "T"):
        self.time_dim = _check_time_dim(time_dim)
        self.transform = v2.Compose([v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                                     v2.RandomGrayscale(p=0.2),
                                     v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)], p=0.5)])

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """N x C x T x H x W ('T') or N x (T*C) x H x W ('C') uint8 clips, augmented in place and returned."""
        for clip in clips:
            frames = clip.transpose(0, 1) if self.time_dim == "T" else clip.unflatten(0, (-1, 3))  # T x C x H x W
            frames.copy_(self.transform(frames))
        return clips


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
