"""C2D ResNets: SIFA-Net and the plain C2D baseline (docs/design.md §5.1).

Layout and attribute names follow the original so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Type

from torch import Tensor, nn

from ..layers import OFFSET_OPTIONS, SIFA, host_sifa
from ..layers.sifa import option
from .checkpointing import GradCheckpointing, run_stage
from .memory_format import ChannelsLast
from .registry import ModelSpec, register_model
from .temporal import check_clip_length, check_video
from .transfer import transfer_resnet, transfer_sifa_resnet

EARLY_STRIDE = 4  # frames folded by the stem's temporal kernel/stride
OUTPUT_STRIDE = 32  # pixels per position of the last stage: stem 2, max-pool 2, three strided stages
SIFA_RESNET = ModelSpec("the SIFA ResNets", "resnet", transfer_sifa_resnet, sifa_kernel=(1, 3, 3, 3),
                        options=OFFSET_OPTIONS, clip_divisor=2 * EARLY_STRIDE,  # the dual branch halves time again
                        output_stride=OUTPUT_STRIDE, channels_last=True)
C2D_RESNET = ModelSpec("the C2D ResNets", "resnet", transfer_resnet, clip_divisor=EARLY_STRIDE,
                       output_stride=OUTPUT_STRIDE, channels_last=True)


def _downsample(inplanes: int, outplanes: int, stride: int) -> Optional[nn.Sequential]:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv3d(inplanes, outplanes, 1, stride=(1, stride, stride), bias=False),
                         nn.BatchNorm3d(outplanes))


class Bottleneck(nn.Module):
    """C2D bottleneck: 1×1×1 -> 1×3×3 (stage stride) -> 1×1×1, BN after each, residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        width, outplanes = planes, planes * self.expansion
        self.conv1 = nn.Conv3d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, outplanes, stride)

    def inter_frame(self, f: Tensor) -> Tensor:
        """Hook between conv2 and conv3 (identity here; the SIFA step in :class:`SIFABottleneck`)."""
        return f

    def residual(self, x: Tensor) -> Tensor:
        f = self.relu(self.bn1(self.conv1(x)))
        f = self.inter_frame(self.relu(self.bn2(self.conv2(f))))
        return self.bn3(self.conv3(f))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class GBottleneck(Bottleneck):
    """Bottleneck whose residual sum also adds a global-context vector (docs/design.md §4.2)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__(inplanes, planes, stride)
        outplanes = planes * self.expansion
        self.fc1 = nn.Linear(outplanes, outplanes // 16)
        self.fc2 = nn.Linear(outplanes // 16, outplanes)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.residual(x)
        context = self.fc2(self.relu(self.fc1(y.mean(dim=(2, 3, 4)))))
        return self.relu(y + identity + context[:, :, None, None, None])


class SIFABottleneck(Bottleneck):
    """Bottleneck with the SIFA step after conv2 (docs/design.md §4.1): a :class:`~sifa.layers.SIFA` layer,
    ``self.sifa``, whose ``conv_offset`` and ``def_cor`` are the block's own attributes, as in the original.

    The original also holds a ``def_agg`` module; it has no parameters or buffers, so the state dict
    lacks it, and the fused op computes the aggregation: the block has none.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, times: int = 4, kernel_size: int = 3,
                 dilation: int = 1, groups: int = 1, offset_mode: Optional[str] = None,
                 offset_guide: Optional[str] = None):
        super().__init__(inplanes, planes, stride)
        self.offset_mode = option("offset_mode", offset_mode)
        if self.offset_mode == "zero":  # the layer needs none; kept so that the state dict stays the original's
            self.conv_offset = nn.Conv3d(planes, 2 * kernel_size * kernel_size, (1, 3, 3), padding=(0, 1, 1),
                                         bias=False)
        host_sifa(self, SIFA(planes, times, kernel_size, dilation, offset_guide=offset_guide,
                             offset_mode=self.offset_mode, groups=groups))

    def unused_parameters(self) -> Iterator[nn.Parameter]:
        """conv_offset's weight when the offsets are fixed at zero (DDP must not wait for its gradient)."""
        return self.conv_offset.parameters() if self.offset_mode == "zero" else iter(())

    def inter_frame(self, f: Tensor) -> Tensor:
        return self.sifa(f)


def _init_weights(net: nn.Module, offset_init: Optional[str] = None) -> None:
    """Kaiming conv init (conv_offset included, as in the original, unless ``offset_init`` is "zero"),
    unit BN, zero last BN of each block."""
    offset_init = option("offset_init", offset_init)
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in net.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        if isinstance(m, SIFABottleneck) and offset_init == "zero":
            nn.init.zeros_(m.conv_offset.weight)


class C2DResNet(GradCheckpointing, ChannelsLast, nn.Module):
    """Stem (4×7×7, temporal stride 4) and four stages of C2D bottlenecks.

    With ``sifa_kernel`` set, stages 2-4 alternate GBottleneck / SIFABottleneck and a dual branch
    (``maxpool_dual`` + ``layer4_dual`` at half the frames) adds a second head. Every network
    returns a list of per-head logits: ``[logits_main, logits_dual]`` here, ``[logits]`` for the
    plain baseline. ``set_channels_last()`` runs it in ``torch.channels_last_3d`` (sifa/models/memory_format.py):
    the SIFA blocks then call the op without layout copies; the outputs are the same.
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 400, dropout_ratio: float = 0.5,
                 clip_length: int = 16, sifa_kernel: Optional[Sequence[int]] = None, name: str = "c2d_resnet",
                 block: Type[Bottleneck] = Bottleneck, offset_mode: Optional[str] = None,
                 offset_guide: Optional[str] = None, offset_init: Optional[str] = None):
        super().__init__()
        self.name = name
        self.block = block  # the bottleneck of the blocks without SIFA (all of them in the baselines)
        self.offset_mode = offset_mode
        self.offset_guide = offset_guide
        self.clip_length = clip_length
        self.sifa = sifa_kernel is not None
        if not self.sifa and (offset_mode, offset_guide, offset_init) != (None, None, None):
            raise ValueError(f"{name}: offset_mode, offset_guide and offset_init need SIFA blocks (sifa_kernel)")
        if self.sifa:
            sifa_kernel = [int(k) for k in sifa_kernel]
            if len(sifa_kernel) != 4 or min(sifa_kernel) < 1:
                raise ValueError(f"{name}: sifa_kernel must list 4 kernel sizes ≥ 1 (one per stage), "
                                 f"got {sifa_kernel}")
            check_clip_length(name, clip_length, 2 * EARLY_STRIDE)  # the dual branch halves time again
        else:
            check_clip_length(name, clip_length, EARLY_STRIDE)
        self.sifa_kernel = sifa_kernel
        times = clip_length // EARLY_STRIDE

        self.conv1 = nn.Conv3d(3, 64, (EARLY_STRIDE, 7, 7), stride=(EARLY_STRIDE, 2, 2), padding=(0, 3, 3),
                               bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.layer1 = self._make_layer(64, 64, layers[0], 1, stage=0, times=times)
        self.layer2 = self._make_layer(256, 128, layers[1], 2, stage=1, times=times)
        self.layer3 = self._make_layer(512, 256, layers[2], 2, stage=2, times=times)
        self.layer4 = self._make_layer(1024, 512, layers[3], 2, stage=3, times=times)
        if self.sifa:
            self.maxpool_dual = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
            self.layer4_dual = self._make_layer(1024, 512, layers[3], 1, stage=3, times=times // 2)
        self.dropout = nn.Dropout(dropout_ratio)
        self.fc = nn.Linear(2048, num_classes)
        if self.sifa:
            self.fc_dual = nn.Linear(2048, num_classes)
        _init_weights(self, offset_init)

    def _make_layer(self, inplanes: int, planes: int, blocks: int, stride: int, stage: int,
                    times: int) -> nn.Sequential:
        out = []
        for i in range(blocks):
            block_in, block_stride = (inplanes, stride) if i == 0 else (planes * Bottleneck.expansion, 1)
            if not self.sifa or stage == 0:
                out.append(self.block(block_in, planes, block_stride))
            elif i % 2 == 0:
                out.append(GBottleneck(block_in, planes, block_stride))
            else:
                out.append(SIFABottleneck(block_in, planes, block_stride, times=times,
                                          kernel_size=self.sifa_kernel[stage], offset_mode=self.offset_mode,
                                          offset_guide=self.offset_guide))
        return nn.Sequential(*out)

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """N×3×L×H×W video -> the last feature map of each branch (main, then dual), N×2048×T×h×w."""
        if self.sifa:
            check_video(self.name, x, 2 * EARLY_STRIDE, frames=self.clip_length)
        else:
            check_video(self.name, x, EARLY_STRIDE)
        x = self.memory_format_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3):
            x = run_stage(stage, x, self.use_checkpoint)
        main = run_stage(self.layer4, x, self.use_checkpoint)
        if not self.sifa:
            return [main]
        return [main, run_stage(self.layer4_dual, self.maxpool_dual(x), self.use_checkpoint)]

    def forward_head(self, features: List[Tensor], pre_logits: bool = False) -> List[Tensor]:
        """Per branch: the mean over T×H×W, dropout, then the branch's classifier (``fc``, ``fc_dual``)
        unless ``pre_logits``."""
        pooled = [self.dropout(f.mean(dim=(2, 3, 4))) for f in features]
        if pre_logits:
            return pooled
        classifiers = [self.fc, self.fc_dual] if self.sifa else [self.fc]
        return [fc(p) for fc, p in zip(classifiers, pooled)]

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.forward_head(self.forward_features(x))


@register_model(SIFA_RESNET)
def c2d_sifa_resnet50(**kwargs: Any) -> C2DResNet:
    """C2D-SIFA-ResNet-50 (blocks [3, 4, 6, 3]); the options of OFFSET_OPTIONS select the ablations."""
    model_args = dict(layers=(3, 4, 6, 3))
    return C2DResNet(**dict(model_args, **kwargs))


@register_model(SIFA_RESNET)
def c2d_sifa_resnet101(**kwargs: Any) -> C2DResNet:
    """C2D-SIFA-ResNet-101 (blocks [3, 4, 23, 3]); options as for ResNet-50."""
    model_args = dict(layers=(3, 4, 23, 3))
    return C2DResNet(**dict(model_args, **kwargs))


@register_model(C2D_RESNET)
def c2d_resnet50(**kwargs: Any) -> C2DResNet:
    """Plain C2D ResNet-50 baseline (blocks [3, 4, 6, 3])."""
    model_args = dict(layers=(3, 4, 6, 3))
    return C2DResNet(**dict(model_args, **kwargs))
