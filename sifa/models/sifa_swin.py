"""C2D Swin Transformers (patch 4, window 7, 224²) with and without SIFA (docs/design.md §5.2).

Built from timm's Swin block, window attention and patch merging; the state-dict layout is the
original's (official Swin naming, ``layers.i.downsample`` at the end of stage i, head ``fc``).
Beyond timm's constructors this relies on timm internals (docs/models.md lists them; tests/test_models.py
pins them): ``window_partition``, ``window_reverse`` and the block's attributes (``attn``, ``attn_mask``,
``window_size``, ``window_area``, ``shift_size``, the norms, ``mlp`` and drop paths), which
``SwinBlock.window_attention`` and ``forward`` use to put the inter-frame step between attention and MLP.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, window_partition, window_reverse
from torch import Tensor, nn

from ..layers import SIFA, host_sifa
from .checkpointing import GradCheckpointing, run_stage
from .registry import ModelSpec, register_model
from .temporal import check_clip_length, check_video
from .transfer import transfer_sifa_swin, transfer_swin

EARLY_STRIDE = 4  # frames folded into one token by the patch embedding
PATCH_SIZE = 4
WINDOW_SIZE = 7
IMG_SIZE = 224
# every SIFA block of SIFA-Swin uses one kernel size: 3, the original's
SIFA_SWIN = ModelSpec("the SIFA Swins", "swin", transfer_sifa_swin, sifa_kernel=(3,), clip_divisor=EARLY_STRIDE,
                      window_grid_size=IMG_SIZE)
C2D_SWIN = ModelSpec("the C2D Swins", "swin", transfer_swin, clip_divisor=EARLY_STRIDE, window_grid_size=IMG_SIZE)


class SwinBlock(SwinTransformerBlock):
    """timm's Swin block on N·T'×h×w×D tokens, with the original's persistent derived buffers.

    ``attn.relative_position_index`` and ``attn_mask`` (shifted blocks) are saved in the state
    dict as in the original, so its checkpoints load strictly.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, shift_size: int,
                 drop_path: float):
        super().__init__(dim, input_resolution, num_heads=num_heads, window_size=WINDOW_SIZE,
                         shift_size=shift_size, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path)
        self.attn.register_buffer("relative_position_index", self.attn.relative_position_index, persistent=True)
        if self.attn_mask is not None:
            self.register_buffer("attn_mask", self.attn_mask, persistent=True)

    @property
    def shifted(self) -> bool:
        """Whether this block uses shifted windows (never when the window covers the whole map)."""
        return any(self.shift_size)

    def inter_frame(self, x: Tensor) -> Tensor:
        """Inter-frame step between the attention and the MLP residuals (none in the plain block)."""
        return x

    def window_attention(self, x: Tensor) -> Tensor:
        """(Shifted) window self-attention of B×H×W×C tokens, as timm's block computes it."""
        B, H, W, C = x.shape
        if self.shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        # maps not divisible by the window are padded at the bottom and right, as in timm
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=self.attn_mask).view(-1, *self.window_size, C)
        x = window_reverse(windows, self.window_size, H + pad_h, W + pad_w)[:, :H, :W].contiguous()
        if self.shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path1(self.window_attention(self.norm1(x)))
        x = self.inter_frame(x)
        x = x.reshape(B, H * W, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class SIFASwinBlock(SwinBlock):
    """Swin block with the inter-frame step: SIFA with zero offsets on non-shifted blocks, a
    temporal 1×3 convolution on shifted ones (docs/design.md §4.3). The SIFA path is a
    :class:`~sifa.layers.SIFA` layer, ``self.sifa`` (fixed window, its branch norm ``tda_norm``, zero at
    init), whose ``def_cor`` and ``tda_norm`` are the block's own attributes, as in the original.
    Both paths' modules exist in every block, as in the original's state dict; its parameter-free
    ``def_agg`` does not (the fused op aggregates). The path a block does not take is listed by
    ``unused_parameters``: training tells DDP to ignore it (no ``find_unused_parameters`` on every step),
    and it gets no gradient, so the optimizer leaves it as loaded, as the original's does; it stays
    trainable in the state dict's terms, as in the original's listing."""

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, shift_size: int,
                 drop_path: float, times: int, kernel_size: int = 3):
        super().__init__(dim, input_resolution, num_heads, shift_size, drop_path)
        self.times = times
        self.kernel_size = kernel_size
        layer = SIFA(dim, times, kernel_size, offset_mode="zero", zero_init_residual=True)
        self.def_cor = layer.def_cor  # registered in the original's order: def_cor, conv, tda_norm
        self.conv = nn.Conv2d(dim, dim, (1, 3), padding=(0, 1), bias=False)
        host_sifa(self, layer, {"norm": "tda_norm"})

    def unused_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the temporal path this block does not take."""
        return (self.tda_norm if self.shifted else self.conv).parameters()

    def inter_frame(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        N, T = B // self.times, self.times
        if self.shifted:
            v = x.reshape(N, T, H * W, C).permute(0, 3, 2, 1)  # N×C×(h·w)×T: convolve along time
            return x + self.conv(v).permute(0, 3, 2, 1).reshape(B, H, W, C)
        v = x.reshape(N, T, H, W, C).permute(0, 4, 1, 2, 3)  # N×C×T×h×w in channels_last_3d: no copy
        return self.sifa(v).permute(0, 2, 3, 4, 1).reshape(B, H, W, C)


class SwinStage(nn.Module):
    """``blocks`` at one resolution, then (except in the last stage) ``downsample`` patch merging."""

    def __init__(self, blocks: Sequence[SwinBlock], downsample: Optional[PatchMerging]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed3D(nn.Module):
    """4×4×4 patches of each group of 4 frames -> N·(L/4)×56×56×D tokens (no norm, no position embedding)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(3, embed_dim, (EARLY_STRIDE, PATCH_SIZE, PATCH_SIZE),
                              stride=(EARLY_STRIDE, PATCH_SIZE, PATCH_SIZE))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # N×D×T'×h×w
        N, D, T, h, w = x.shape
        return x.permute(0, 2, 3, 4, 1).reshape(N * T, h, w, D)


class C2DSwin(GradCheckpointing, nn.Module):
    """Swin run on every group of 4 frames; the clips' logits are averaged. SIFA blocks when ``sifa_kernel``
    (one kernel size, as an int or a list of one) is set.

    Returns ``[logits]``: a list of per-head logits, like every network of the registry.
    """

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], drop_path_rate: float,
                 num_classes: int = 400, dropout_ratio: float = 0.5, clip_length: int = 16,
                 sifa_kernel: Union[int, Sequence[int], None] = None, name: str = "c2d_swin"):
        super().__init__()
        self.name = name
        self.clip_length = clip_length
        self.sifa = sifa_kernel is not None
        check_clip_length(name, clip_length, EARLY_STRIDE)
        if self.sifa:
            kernels = [sifa_kernel] if isinstance(sifa_kernel, int) else list(sifa_kernel)
            if len(kernels) != 1 or not isinstance(kernels[0], int) or kernels[0] < 1:
                raise ValueError(f"{name}: sifa_kernel must be one kernel size ≥ 1 (every SIFA block uses it), "
                                 f"got {sifa_kernel}")
            sifa_kernel = kernels[0]
        times = clip_length // EARLY_STRIDE
        self.patch_embed = PatchEmbed3D(embed_dim)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        resolution = IMG_SIZE // PATCH_SIZE
        stages, first = [], 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** i
            blocks = []
            for j in range(depth):
                args = (dim, (resolution, resolution), heads, 0 if j % 2 == 0 else WINDOW_SIZE // 2,
                        drop_path[first + j])
                blocks.append(SIFASwinBlock(*args, times=times, kernel_size=sifa_kernel) if self.sifa
                              else SwinBlock(*args))
            last = i == len(depths) - 1
            stages.append(SwinStage(blocks, None if last else PatchMerging(dim)))
            first += depth
            resolution //= 1 if last else 2
        self.layers = nn.ModuleList(stages)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.dropout = nn.Dropout(dropout_ratio)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, SIFASwinBlock):  # the SIFA residual starts switched off
                nn.init.zeros_(m.tda_norm.weight)
                nn.init.zeros_(m.tda_norm.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """N×3×L×224×224 video -> [N×T'×7×7×D normalised tokens] of its T' = L/4 four-frame clips."""
        check_video(self.name, x, EARLY_STRIDE, frames=self.clip_length if self.sifa else None,
                    size=(IMG_SIZE, IMG_SIZE))
        N = x.shape[0]
        x = self.patch_embed(x)
        for stage in self.layers:
            x = run_stage(stage, x, self.use_checkpoint)
        x = self.norm(x)
        return [x.view(N, -1, *x.shape[1:])]

    def forward_head(self, features: List[Tensor], pre_logits: bool = False) -> List[Tensor]:
        """Per clip the token mean, dropout and ``fc``; then the mean over the clips (of the features if
        ``pre_logits``)."""
        (tokens,) = features
        x = self.dropout(tokens.mean(dim=(2, 3)))  # N×T'×D
        return [(x if pre_logits else self.fc(x)).mean(dim=1)]

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.forward_head(self.forward_features(x))


# model_args of each size: embedding dim, depths, heads per stage, drop-path rate (timm's swin_{tiny,small,base,large})
_SIZES = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.5),
}


@register_model(SIFA_SWIN)
def c2d_sifa_swin_vit_t_p4_w7(**kwargs: Any) -> C2DSwin:
    """C2D-SIFA-Swin-T (D 96, depths 2-2-6-2, drop path 0.2): the size to fine-tune on one GPU."""
    return C2DSwin(**dict(_SIZES["t"], **kwargs))


@register_model(SIFA_SWIN)
def c2d_sifa_swin_vit_s_p4_w7(**kwargs: Any) -> C2DSwin:
    """C2D-SIFA-Swin-S (D 96, drop path 0.3)."""
    return C2DSwin(**dict(_SIZES["s"], **kwargs))


@register_model(SIFA_SWIN)
def c2d_sifa_swin_vit_b_p4_w7(**kwargs: Any) -> C2DSwin:
    """C2D-SIFA-Swin-B (D 128, drop path 0.5)."""
    return C2DSwin(**dict(_SIZES["b"], **kwargs))


@register_model(SIFA_SWIN)
def c2d_sifa_swin_vit_l_p4_w7(**kwargs: Any) -> C2DSwin:
    """C2D-SIFA-Swin-L (D 192, drop path 0.5)."""
    return C2DSwin(**dict(_SIZES["l"], **kwargs))


@register_model(C2D_SWIN)
def c2d_swin_vit_t_p4_w7(**kwargs: Any) -> C2DSwin:
    """Plain C2D Swin-T."""
    return C2DSwin(**dict(_SIZES["t"], **kwargs))


@register_model(C2D_SWIN)
def c2d_swin_vit_s_p4_w7(**kwargs: Any) -> C2DSwin:
    """Plain C2D Swin-S."""
    return C2DSwin(**dict(_SIZES["s"], **kwargs))


@register_model(C2D_SWIN)
def c2d_swin_vit_b_p4_w7(**kwargs: Any) -> C2DSwin:
    """Plain C2D Swin-B."""
    return C2DSwin(**dict(_SIZES["b"], **kwargs))


@register_model(C2D_SWIN)
def c2d_swin_vit_l_p4_w7(**kwargs: Any) -> C2DSwin:
    """Plain C2D Swin-L."""
    return C2DSwin(**dict(_SIZES["l"], **kwargs))
