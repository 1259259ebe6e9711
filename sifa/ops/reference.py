"""Pure-PyTorch SIFA operator (docs/design.md §2-3): the ground truth for tests and the fallback backend.

Bilinear sampling is written with explicit corner gathers (not ``grid_sample``) so that the
zero-outside rule of the original holds for every map size, 1-pixel-wide maps included, and
autograd differentiates it exactly as the kernels do.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._utils import IntPair, int_pair, previous_frame


def _bilinear_sample(img: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Sample ``img`` (B×C×H×W) at float pixel coordinates ``py``/``px`` (B×P) -> B×C×P.

    Zero when py ≤ −1, px ≤ −1, py ≥ H or px ≥ W, and at NaN positions (as in the kernels: every
    comparison with NaN fails), with zero gradient; corners outside the image count as zero.
    """
    B, C, H, W = img.shape
    flat = img.reshape(B, C, H * W)
    inside = (py > -1) & (px > -1) & (py < H) & (px < W)
    # positions that sample nothing are moved to (0, 0): floor/long of NaN or ±inf would be garbage
    # indices, and their weights NaN (inf − inf) times zero
    py, px = torch.where(inside, py, 0), torch.where(inside, px, 0)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            valid = inside & (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
            idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).long()
            vals = flat.gather(2, idx.unsqueeze(1).expand(B, C, idx.shape[1]))
            term = vals * (wy * wx * valid).unsqueeze(1).to(img.dtype)
            out = term if out is None else out + term
    return out


def _sample_taps(x: Tensor, offset: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int]) -> Tensor:
    """S(x[n,c,t], py_k, px_k) for every tap k: returns N×C×K×T×H×W (K = kh·kw)."""
    N, C, T, H, W = x.shape
    kh, kw = kernel
    K = kh * kw
    off = offset.reshape(N, K, 2, T, H, W)
    hh = torch.arange(H, device=x.device, dtype=offset.dtype).view(1, 1, 1, H, 1)
    ww = torch.arange(W, device=x.device, dtype=offset.dtype).view(1, 1, 1, 1, W)
    ii = torch.arange(kh, device=x.device, dtype=offset.dtype).repeat_interleave(kw).view(1, K, 1, 1, 1)
    jj = torch.arange(kw, device=x.device, dtype=offset.dtype).repeat(kh).view(1, K, 1, 1, 1)
    py = hh * stride[0] - padding[0] + ii * dilation[0] + off[:, :, 0]  # N×K×T×H×W
    px = ww * stride[1] - padding[1] + jj * dilation[1] + off[:, :, 1]
    # sample frame t of x at the taps of frame t: batch over (n, t)
    img = x.permute(0, 2, 1, 3, 4).reshape(N * T, C, H, W)
    py = py.permute(0, 2, 1, 3, 4).reshape(N * T, K * H * W)
    px = px.permute(0, 2, 1, 3, 4).reshape(N * T, K * H * W)
    s = _bilinear_sample(img, py, px).view(N, T, C, K, H, W)
    return s.permute(0, 2, 3, 1, 4, 5)


def defcor(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 1,
           dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """Deformable correlation: N×(G·K)×T×H×W scores of frame prev(t) against frame t's taps."""
    N, C, T, H, W = input.shape
    kernel = tuple(weight.shape[2:])
    K = kernel[0] * kernel[1]
    s = _sample_taps(input, offset, kernel, int_pair(stride), int_pair(padding), int_pair(dilation))
    q = previous_frame(input).unsqueeze(2)                                # N×C×1×T×H×W
    wgt = weight.reshape(C, T, K).permute(0, 2, 1)[None, :, :, :, None, None]  # 1×C×K×T×1×1
    prod = (s * q * wgt).view(N, groups, C // groups, K, T, H, W).sum(2)
    return prod.reshape(N, groups * K, T, H, W)


def defagg(input: Tensor, offset: Tensor, weight: Tensor, kernel_size: IntPair = 3, stride: IntPair = 1,
           padding: IntPair = 1, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """Deformable aggregation: frame t's taps weighted by the scores ``weight`` (N×G·K×T×H×W)."""
    N, C, T, H, W = input.shape
    kernel = int_pair(kernel_size)
    K = kernel[0] * kernel[1]
    s = _sample_taps(input, offset, kernel, int_pair(stride), int_pair(padding), int_pair(dilation))
    corr = weight.reshape(N, groups, 1, K, T, H, W)
    out = (s.view(N, groups, C // groups, K, T, H, W) * corr).sum(3)
    return out.reshape(N, C, T, H, W)


def sifa_attention(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 1,
                   dilation: IntPair = 1, groups: int = 1) -> Tuple[Tensor, Tensor]:
    """defagg(input, offset, defcor(input, offset, weight)) and the scores."""
    scores = defcor(input, offset, weight, stride, padding, dilation, groups)
    kernel = tuple(weight.shape[2:])
    return defagg(input, offset, scores, kernel, stride, padding, dilation, groups), scores
