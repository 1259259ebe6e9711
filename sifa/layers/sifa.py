"""The SIFA step of docs/design.md §4.1 as one module: frame t attends to the deformed K×K neighbourhood
of frame t+1, guided by the frame difference, and adds what it gathers to itself.

SIFA-Net's bottleneck and SIFA-Swin's block run this layer; they keep its modules as their own
attributes (:func:`host_sifa`), so their state dicts stay the original's.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from ..ops import DefCorFixW, previous_frame
from ..ops._utils import is_channels_last, shift_frames

# The layer's options (the ablations of docs/reproduction.md); the first of each is the paper's design.
OFFSET_OPTIONS = {
    "offset_mode": ("learned", "zero"),  # zero: attend over the fixed K×K window (no conv_offset)
    "offset_guide": ("difference", "plain"),  # what conv_offset reads: the difference-rescaled guide, or x itself
    # conv_offset's initial weights: PyTorch's Kaiming-uniform conv init (offsets start random, as the
    # original's), or zero (offsets start at the fixed K×K window, the deformable-convolution convention)
    "offset_init": ("kaiming", "zero"),
}


def option(key: str, value: Optional[str]) -> str:
    """``value`` of the option ``key`` of OFFSET_OPTIONS, checked; None: the default (the paper's design)."""
    choices = OFFSET_OPTIONS[key]
    if value is None:
        return choices[0]
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def shift_back(x: Tensor) -> Tensor:
    """x[:, :, t+1] at frame t, zeros at the last frame (frame t receives what frame t+1 attended). Channels-last
    ``x`` gets a channels-last result and gradient (a channels-last network's SIFA op then copies nothing)."""
    if is_channels_last(x):
        return shift_frames(x, -1)
    return torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], dim=2)


def difference_guide(x: Tensor) -> Tensor:
    """What conv_offset reads: x rescaled by the sigmoid of its difference to the previous frame, plus x."""
    return torch.sigmoid(x - previous_frame(x)) * x + x


class SIFA(nn.Module):
    """Stand-alone inter-frame attention on N×C×T×H×W features (channels-last kept).

    ``out = x + shift_back(sifa_attention(x, offset))``: the scores correlate frame t with the K×K taps
    of frame t+1 placed by ``offset = conv_offset(guide(x))`` (zero with ``offset_mode="zero"``), and
    frame t gathers those taps weighted by them; the last frame gets nothing. ``times`` is T, the
    frames the layer sees (the frozen correlation weight ``def_cor.weight`` is C×T×K×K).

    ``zero_init_residual=True`` puts a LayerNorm over the channels on the branch (``norm``, as
    SIFA-Swin's ``tda_norm``) with zero weight and bias: the layer starts as the identity, so it can
    be inserted into a trained network without changing its outputs; the norm's gradient is not zero,
    so after the first update the branch, and conv_offset's gradient, come alive.
    """

    def __init__(self, channels: int, times: int, kernel_size: int = 3, dilation: int = 1,
                 offset_guide: str = "difference", offset_mode: str = "learned", offset_init: str = "kaiming",
                 zero_init_residual: bool = False, groups: int = 1):
        super().__init__()
        self.offset_mode = option("offset_mode", offset_mode)
        self.offset_guide = option("offset_guide", offset_guide)
        self.kernel_size = kernel_size
        if self.offset_mode == "learned":
            self.conv_offset = nn.Conv3d(channels, 2 * kernel_size ** 2, (1, 3, 3), padding=(0, 1, 1), bias=False)
            if option("offset_init", offset_init) == "zero":
                nn.init.zeros_(self.conv_offset.weight)
        self.def_cor = DefCorFixW(channels, times, kernel_size, dilation=dilation, defcor_groups=groups)
        self.norm = nn.LayerNorm(channels) if zero_init_residual else None
        if self.norm is not None:
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

    def offsets(self, x: Tensor) -> Tensor:
        """N×2K²×T×H×W sampling offsets into frame t+1 for each position of frame t."""
        if self.offset_mode == "zero":
            layout = torch.channels_last_3d if is_channels_last(x) else torch.contiguous_format
            return torch.empty((x.shape[0], 2 * self.kernel_size ** 2, *x.shape[2:]), dtype=x.dtype, device=x.device,
                               memory_format=layout).zero_()
        guide = x if self.offset_guide == "plain" else difference_guide(x)
        # under autocast the conv may come out in another precision than x; the SIFA ops need matching dtypes
        return self.conv_offset(guide).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        # = def_agg(x, offset, def_cor(x, offset)), fused into one op
        branch = shift_back(self.def_cor.attend(x, self.offsets(x)))
        if self.norm is not None:  # over the channels: channels-last for the LayerNorm, a view for channels_last_3d
            branch = self.norm(branch.movedim(1, -1)).movedim(-1, 1)
        return x + branch

    def extra_repr(self) -> str:
        return f"offset_mode={self.offset_mode!r}, offset_guide={self.offset_guide!r}"


def host_sifa(block: nn.Module, layer: SIFA, names: Optional[Mapping[str, str]] = None) -> None:
    """Make ``layer`` part of ``block`` with its modules registered on ``block`` itself (under ``names``,
    default their own), not under a ``layer.`` prefix: the block's state-dict keys stay the original's.
    ``block.sifa`` is the layer (unregistered: its modules already are the block's)."""
    for name, module in layer.named_children():
        block.add_module((names or {}).get(name, name), module)
    block.__dict__["sifa"] = layer


def sifa_layers(model: nn.Module) -> Dict[str, SIFA]:
    """Every SIFA layer of ``model`` by module name; a layer hosted by a block (:func:`host_sifa`) under
    the block's name, e.g. ``layer2.1`` of SIFA-Net."""
    found = {}
    for name, module in model.named_modules():
        hosted = module.__dict__.get("sifa")
        if isinstance(module, SIFA):
            found[name] = module
        elif isinstance(hosted, SIFA):
            found[name] = hosted
    return found
