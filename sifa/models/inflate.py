"""C2D video networks from 2-D image networks (docs/layers.md): the frames of a clip go through the 2-D
network as one batch, SIFA layers between its stages attend across them, and the frames' logits are
averaged. :func:`inflate_2d` does it for timm's ResNets/ResNeXts, ConvNeXts and EfficientNets (any timm
network whose ``feature_info`` stages are, or end in, a sequence of blocks) and torchvision's ResNets;
``net_name: timm/<model>`` builds one from a configuration.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..layers import OFFSET_OPTIONS, SIFA
from .registry import ModelSpec, register_prefix
from .temporal import check_video
from .tsm_resnet import temporal_shift as shift_clip
from .weights import StateDict

TIMM_PREFIX = "timm/"
Stage = Union[int, str]  # timm's feature index (out_indices) or the stage module's name
TORCHVISION_RESNET_STAGES = ("relu", "layer1", "layer2", "layer3", "layer4")  # as timm's ResNet feature_info


def stage_names(backbone: nn.Module) -> List[str]:
    """The module names of the 2-D network's stages, in order: timm's ``feature_info`` (the modules timm's
    ``features_only`` returns the outputs of), or the stem and four stages of a torchvision ResNet."""
    info = getattr(backbone, "feature_info", None)
    if info:
        return [entry["module"] for entry in info]
    if type(backbone).__name__ == "ResNet" and type(backbone).__module__.startswith("torchvision."):
        return list(TORCHVISION_RESNET_STAGES)
    raise ValueError(f"{type(backbone).__name__}: not a timm network with feature_info or a torchvision ResNet; "
                     f"its stages are unknown")


def resolve_stages(names: Sequence[str], sifa_stages: Sequence[Stage]) -> List[int]:
    """Indices into ``names`` of ``sifa_stages`` (feature indices or module names), sorted; a ValueError
    naming the stages there are."""
    known = ", ".join(f"{i} ({name})" for i, name in enumerate(names))
    indices = []
    for stage in sifa_stages:
        if isinstance(stage, str) and stage in names:
            indices.append(names.index(stage))
        elif isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < len(names):
            indices.append(stage)
        else:
            raise ValueError(f"sifa_stages: {stage!r} is not a stage of the network; its stages: {known}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"sifa_stages: {list(sifa_stages)} names a stage twice; its stages: {known}")
    return sorted(indices)


def block_sequence(backbone: nn.Module, name: str) -> nn.Sequential:
    """The sequence of blocks that stage ``name`` ends with: the stage itself (ResNet layers, EfficientNet
    blocks) or its ``blocks`` (timm's ConvNeXt stages); appending to it puts a module after the stage,
    also where timm's activation checkpointing runs the blocks one by one."""
    stage = backbone.get_submodule(name)
    blocks = stage if isinstance(stage, nn.Sequential) else getattr(stage, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(f"sifa_stages: stage {name} ({type(stage).__name__}) is not a sequence of blocks, so no "
                         f"SIFA layer can follow it (the stem is not a stage for SIFA)")
    return blocks


def on_clips(fn: Callable[[Tensor], Tensor], frames: Tensor, times: int) -> Tensor:
    """``fn`` of the (N·T)×C×h×w frame batch of a 2-D network seen as clips N×C×T×h×w (channels_last_3d if the
    frames are NHWC), returned as a frame batch again."""
    NT, C, h, w = frames.shape
    video = frames.view(NT // times, times, C, h, w).transpose(1, 2)
    return fn(video).transpose(1, 2).reshape(NT, C, h, w)


class FrameBatchSIFA(nn.Module):
    """A SIFA layer on the (N·T)×C×h×w frame batch of a 2-D network: the clips' frames as N×C×T×h×w."""

    def __init__(self, sifa: SIFA, times: int):
        super().__init__()
        self.sifa = sifa
        self.times = times

    def forward(self, frames: Tensor) -> Tensor:
        return on_clips(self.sifa, frames, self.times)


# The temporal shift of the inflated ResNets (the TSM baseline of docs/reproduction.md); the first is the default.
TEMPORAL_SHIFT = ("none", "residual")


class FrameBatchShift:
    """The forward pre-hook that shifts a residual branch's input in time, on the (N·T)×C×h×w frame batch:
    1/8 of the channels one frame forward, 1/8 back, zero-padded (``tsm_resnet.temporal_shift``)."""

    def __init__(self, times: int):
        self.times = times

    def __call__(self, module: nn.Module, args: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        (frames,) = args
        return (on_clips(shift_clip, frames, self.times),)


def add_temporal_shift(backbone: nn.Module, times: int) -> List[str]:
    """TSM in every residual block of a timm or torchvision ResNet: a pre-hook on the block's ``conv1`` shifts
    the branch's input in time (the shortcut does not shift); no parameter or state-dict key changes. Returns
    the names of the shifted convolutions; a ValueError for a network without such blocks."""
    shifted = []
    for name, module in backbone.named_modules():
        if type(module).__name__ in ("BasicBlock", "Bottleneck") and isinstance(getattr(module, "conv1", None),
                                                                                   nn.Conv2d):
            module.conv1.register_forward_pre_hook(FrameBatchShift(times))
            shifted.append(name + ".conv1")
    if not shifted:
        raise ValueError(f"temporal_shift: {type(backbone).__name__} has no ResNet blocks (BasicBlock, Bottleneck) "
                         f"to shift; only the inflated ResNets take it")
    return shifted


def _stage_channels(backbone: nn.Module, names: Sequence[str]) -> List[int]:
    """The output channels of the named stages, from one small forward (eval mode, no gradient)."""
    channels = {}
    hooks = [backbone.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: channels.__setitem__(name, out.shape[1])) for name in names]
    training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, 32, 32))  # the smallest frame an output stride of 32 takes
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
    return [channels[name] for name in names]


def _reset_classifier(backbone: nn.Module, num_classes: int) -> None:
    if hasattr(backbone, "reset_classifier"):  # timm
        backbone.reset_classifier(num_classes)
    else:  # torchvision's ResNet
        backbone.fc = nn.Linear(backbone.fc.in_features, num_classes)


class InflatedC2D(nn.Module):
    """A 2-D image network run on every frame of N×3×T×H×W clips, SIFA layers after some of its stages;
    returns ``[logits]``, the frames' logits averaged. Made by :func:`inflate_2d`."""

    def __init__(self, backbone: nn.Module, clip_length: int, sifa_stages: Sequence[str], name: str,
                 shifted: Sequence[str] = ()):
        super().__init__()
        self.backbone = backbone
        self.clip_length = clip_length
        self.sifa_stages = list(sifa_stages)
        self.name = name
        self.shifted = list(shifted)  # the convolutions whose input the temporal shift moves (none by default)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing of the 2-D network's blocks (the SIFA layers are blocks too)."""
        if not hasattr(self.backbone, "set_grad_checkpointing"):
            if enable:
                raise ValueError(f"{self.name}: {type(self.backbone).__name__} has no activation checkpointing")
            return
        self.backbone.set_grad_checkpointing(enable)

    def frames(self, x: Tensor) -> Tensor:
        """N×3×T×H×W clips -> their (N·T)×3×H×W frames (clip-major)."""
        check_video(self.name, x, 1, frames=self.clip_length if self.sifa_stages else None)
        return x.transpose(1, 2).flatten(0, 1)

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """[N×C×T×h×w]: the 2-D network's ``forward_features`` of every frame (timm networks)."""
        features = self.backbone.forward_features(self.frames(x))
        return [features.view(x.shape[0], x.shape[2], *features.shape[1:]).transpose(1, 2)]

    def forward_head(self, features: List[Tensor], pre_logits: bool = False) -> List[Tensor]:
        """[N×classes]: the 2-D network's ``forward_head`` of every frame (timm networks), averaged over frames."""
        (video,) = features
        out = self.backbone.forward_head(video.transpose(1, 2).flatten(0, 1), pre_logits=pre_logits)
        return [out.view(video.shape[0], video.shape[2], -1).mean(dim=1)]

    def forward(self, x: Tensor) -> List[Tensor]:
        out = self.backbone(self.frames(x))
        return [out.view(x.shape[0], x.shape[2], -1).mean(dim=1)]


def inflate_2d(backbone: nn.Module, clip_length: int, sifa_stages: Sequence[Stage], num_classes: Optional[int] = None,
               kernel_size: int = 3, offset_guide: Optional[str] = None, offset_mode: Optional[str] = None,
               offset_init: Optional[str] = None, name: Optional[str] = None,
               temporal_shift: Optional[str] = None) -> InflatedC2D:
    """A C2D video network for clips of ``clip_length`` frames from the 2-D ``backbone`` (changed in place:
    SIFA layers are appended to its stages, so its own state-dict keys stay, under ``backbone.``).

    ``sifa_stages``: after which stages a SIFA layer (K = ``kernel_size``, options as :class:`~sifa.layers.SIFA`)
    attends across frames, as timm's feature indices (``out_indices``: ``[2, 3]`` for a ResNet's layer2 and
    layer3, 0 is the stem) or module names (``"layer3"``, ``"stages.2"``); ``[]`` gives the plain C2D network.
    The layers start as the identity (``zero_init_residual``), so the network's logits at initialisation are
    the 2-D network's averaged over the frames, and its ImageNet weights fine-tune from there.
    ``num_classes``: a new classifier of that size (None keeps the network's).
    ``temporal_shift="residual"``: TSM in every residual block of a ResNet (:func:`add_temporal_shift`).
    """
    temporal_shift = temporal_shift or TEMPORAL_SHIFT[0]
    if temporal_shift not in TEMPORAL_SHIFT:
        raise ValueError(f"temporal_shift must be one of {list(TEMPORAL_SHIFT)}, got {temporal_shift!r}")
    names = stage_names(backbone)
    chosen = [names[i] for i in resolve_stages(names, sifa_stages)]
    for stage, channels in zip(chosen, _stage_channels(backbone, chosen)):
        layer = SIFA(channels, clip_length, kernel_size, offset_guide=offset_guide, offset_mode=offset_mode,
                     offset_init=offset_init, zero_init_residual=True)
        block_sequence(backbone, stage).append(FrameBatchSIFA(layer, clip_length))
    shifted = add_temporal_shift(backbone, clip_length) if temporal_shift == "residual" else []
    if num_classes is not None:
        _reset_classifier(backbone, num_classes)
    return InflatedC2D(backbone, clip_length, chosen, name or f"c2d_{type(backbone).__name__.lower()}", shifted)


def transfer_2d(state_dict: StateDict, early_stride: int) -> StateDict:
    """The 2-D network's own weights (timm's or torchvision's layout) under ``backbone.``: no inflation."""
    return {"backbone." + key: value for key, value in state_dict.items()}




def timm_c2d(model_name: str, num_classes: int = 400, dropout_ratio: float = 0.0, clip_length: int = 8,
             sifa_kernel: Sequence[int] = (3,), sifa_stages: Sequence[Stage] = (), name: Optional[str] = None,
             **options: Any) -> InflatedC2D:
    """timm's ``model_name`` (random weights: ImageNet ones come with ``pretrained_model``), inflated."""
    import timm

    backbone = timm.create_model(model_name, pretrained=False, num_classes=num_classes, drop_rate=dropout_ratio)
    (kernel_size,) = sifa_kernel
    return inflate_2d(backbone, clip_length, sifa_stages, kernel_size=kernel_size, name=name, **options)


def check_timm_config(net_name: str, cfg: SimpleNamespace) -> Optional[Tuple[str, str]]:
    """(key, problem) when timm lacks the network of ``net_name`` or ``cfg.sifa_stages`` are not stages of it
    that a SIFA layer can follow; checked on the network built without weights (meta device)."""
    import timm

    model_name = net_name[len(TIMM_PREFIX):]
    if not timm.is_model(model_name):
        return "net_name", (f"names {model_name!r}, which timm {timm.__version__} lacks (timm.list_models() lists "
                            f"its names)")
    with torch.device("meta"):
        backbone = timm.create_model(model_name, pretrained=False)
    names = stage_names(backbone)
    if cfg.sifa_stages is None:
        return "sifa_stages", (f"must list the stages of {net_name} that SIFA layers follow ([] for the plain C2D "
                               f"network), by index or name: " + ", ".join(f"{i} ({n})" for i, n in enumerate(names)))
    try:
        for index in resolve_stages(names, cfg.sifa_stages):
            block_sequence(backbone, names[index])
    except ValueError as e:
        return "sifa_stages", str(e)[len("sifa_stages: "):]
    return None


def timm_classifiers(net_name: str) -> Tuple[str, ...]:
    """The state-dict prefixes of the classifier of ``timm/<name>``, as timm's pretrained config names it."""
    import timm

    classifier = timm.models.get_pretrained_cfg(net_name[len(TIMM_PREFIX):]).classifier
    return tuple(f"backbone.{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))


TIMM_C2D = ModelSpec("the inflated timm networks", "timm", transfer_2d, sifa_kernel=(3,),
                     options={**OFFSET_OPTIONS, "temporal_shift": TEMPORAL_SHIFT},
                     output_stride=32, config_keys=("sifa_stages",), check=check_timm_config,
                     classifiers=timm_classifiers)
register_prefix(TIMM_PREFIX, TIMM_C2D, timm_c2d)
