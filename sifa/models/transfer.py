"""ImageNet weight transfer and checkpoint surgery (docs/design.md §6).

ResNets: torchvision checkpoints (e.g. resnet50-19c8e357.pth). Swin: the official checkpoint
(entries under ``model``, stage i's patch merging at the end of stage i, head ``head``) or timm's
layout (patch merging at the start of stage i+1, head ``head.fc``). Each network registers the
transfer of its family (its ``ModelSpec``); :func:`transfer_weights` looks it up.
"""
from __future__ import annotations

import logging
import re
from typing import Mapping

from torch import Tensor

from .registry import model_entry
from .weights import StateDict, state_dict_of

logger = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("fc.", "fc_dual.", "head.")
DEFCOR_WEIGHT = "def_cor.weight"  # frozen, shaped C×T×K×K: depends on the clip length


def inflate_centre_frame(weight: Tensor, frames: int) -> Tensor:
    """O×I×kh×kw -> O×I×frames×kh×kw holding ``weight`` at frame ``frames // 2`` and zeros elsewhere
    ([0, 0, w, 0] for 4 frames), so a static clip gives the 2-D response."""
    out = weight.new_zeros((weight.shape[0], weight.shape[1], frames, *weight.shape[2:]))
    out[:, :, frames // 2] = weight
    return out


def transfer_resnet(sd: StateDict, early_stride: int) -> StateDict:
    """torchvision ResNet -> C2D ResNet: the stem inflated to ``early_stride`` frames, other kernels 1 frame."""
    out: StateDict = {}
    for k, v in sd.items():
        if k == "conv1.weight":
            v = inflate_centre_frame(v, early_stride)
        elif v.dim() == 4:  # every other conv and downsample.0: a time axis of 1
            v = v.unsqueeze(2)
        out[k] = v
    return out


def transfer_sifa_resnet(sd: StateDict, early_stride: int) -> StateDict:
    """As :func:`transfer_resnet`; the dual branch starts from the same ImageNet stage 4."""
    out = transfer_resnet(sd, early_stride)
    out.update({"layer4_dual." + k[len("layer4."):]: v.clone() for k, v in out.items() if k.startswith("layer4.")})
    return out


def transfer_swin(sd: StateDict, early_stride: int) -> StateDict:
    """Official or timm Swin -> C2D Swin: the original's stage layout, head ``fc``, patch embedding inflated."""
    timm_layout = "layers.0.downsample.reduction.weight" not in sd and any(".downsample." in k for k in sd)
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("patch_embed.norm."):
            logger.info("dropping %s: the C2D Swin has no patch-embedding norm", k)
            continue
        if timm_layout:
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
        k = re.sub(r"^head\.(fc\.)?", "fc.", k)
        if k == "patch_embed.proj.weight":
            v = inflate_centre_frame(v, early_stride)
        out[k] = v
    return out


def transfer_sifa_swin(sd: StateDict, early_stride: int) -> StateDict:
    """As :func:`transfer_swin`; the temporal conv of each block starts as a no-op (zeros)."""
    out = transfer_swin(sd, early_stride)
    for k in list(out):
        block = re.match(r"^(layers\.\d+\.blocks\.\d+)\.norm1\.weight$", k)
        if block:
            dim = out[k].shape[0]
            out[f"{block.group(1)}.conv.weight"] = out[k].new_zeros((dim, dim, 1, 3))
    return out


def transfer_weights(net_name: str, state_dict: Mapping, early_stride: int = 4) -> StateDict:
    """Turn a 2-D ImageNet checkpoint into a state dict for the C2D network ``net_name``."""
    return model_entry(net_name).transfer(state_dict_of(state_dict), early_stride)


def remove_fc(net_name: str, state_dict: Mapping) -> StateDict:
    """Drop the classifier(s) (``fc``, ``fc_dual``, ``head``; an inflated timm network's own, e.g.
    ``backbone.head.fc``), e.g. to fine-tune on other classes."""
    spec = model_entry(net_name).spec
    prefixes = CLASSIFIER_PREFIXES if spec.classifiers is None else spec.classifiers(net_name)
    return {k: v for k, v in state_dict_of(state_dict).items() if not k.startswith(prefixes)}


def remove_defcor_weight(net_name: str, state_dict: Mapping) -> StateDict:
    """Drop the frozen ``def_cor.weight`` entries, whose shape depends on the clip length."""
    model_entry(net_name)
    return {k: v for k, v in state_dict_of(state_dict).items() if not k.endswith(DEFCOR_WEIGHT)}

