"""ImageNet weight transfer and checkpoint surgery (SPEC §7).

ResNets: torchvision checkpoints (e.g. resnet50-19c8e357.pth). Swin: the official checkpoint
(entries under ``model``, stage i's patch merging at the end of stage i, head ``head``) or timm's
layout (patch merging at the start of stage i+1, head ``head.fc``).
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Mapping, Tuple

from torch import Tensor, nn

from .registry import list_models

logger = logging.getLogger(__name__)

StateDict = Dict[str, Tensor]
CLASSIFIER_PREFIXES = ("fc.", "fc_dual.", "head.")


def _family(net_name: str) -> str:
    if net_name not in list_models():
        raise ValueError(f"unknown network {net_name!r}; known: {', '.join(list_models())}")
    return "swin" if "swin" in net_name else "resnet"


def _unwrap(state_dict: Mapping) -> StateDict:
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    return dict(state_dict)


def inflate_centre_frame(weight: Tensor, frames: int) -> Tensor:
    """O×I×kh×kw -> O×I×frames×kh×kw holding ``weight`` at frame ``frames // 2`` and zeros elsewhere
    ([0, 0, w, 0] for 4 frames), so a static clip gives the 2-D response."""
    out = weight.new_zeros((weight.shape[0], weight.shape[1], frames, *weight.shape[2:]))
    out[:, :, frames // 2] = weight
    return out


def _transfer_resnet(net_name: str, sd: StateDict, early_stride: int) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k == "conv1.weight":
            v = inflate_centre_frame(v, early_stride)
        elif v.dim() == 4:  # every other conv and downsample.0: a time axis of 1
            v = v.unsqueeze(2)
        out[k] = v
    if net_name.startswith("c2d_sifa_"):  # the dual branch starts from the same ImageNet stage 4
        out.update({"layer4_dual." + k[len("layer4."):]: v.clone() for k, v in out.items()
                    if k.startswith("layer4.")})
    return out


def _transfer_swin(net_name: str, sd: StateDict, early_stride: int) -> StateDict:
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
    if net_name.startswith("c2d_sifa_"):  # the temporal conv of each block starts as a no-op
        for k in list(out):
            block = re.match(r"^(layers\.\d+\.blocks\.\d+)\.norm1\.weight$", k)
            if block:
                dim = out[k].shape[0]
                out[f"{block.group(1)}.conv.weight"] = out[k].new_zeros((dim, dim, 1, 3))
    return out


def transfer_weights(net_name: str, state_dict: Mapping, early_stride: int = 4) -> StateDict:
    """Turn a 2-D ImageNet checkpoint into a state dict for the C2D network ``net_name``."""
    sd = _unwrap(state_dict)
    if _family(net_name) == "swin":
        return _transfer_swin(net_name, sd, early_stride)
    return _transfer_resnet(net_name, sd, early_stride)


def remove_fc(net_name: str, state_dict: Mapping) -> StateDict:
    """Drop the classifier(s) (``fc``, ``fc_dual``, ``head``), e.g. to fine-tune on other classes."""
    _family(net_name)
    return {k: v for k, v in _unwrap(state_dict).items() if not k.startswith(CLASSIFIER_PREFIXES)}


def remove_defcor_weight(net_name: str, state_dict: Mapping) -> StateDict:
    """Drop the frozen ``def_cor.weight`` entries, whose shape depends on the clip length."""
    _family(net_name)
    return {k: v for k, v in _unwrap(state_dict).items() if not k.endswith("def_cor.weight")}


def load_state_dict_logged(model: nn.Module, state_dict: Mapping) -> Tuple[List[str], List[str]]:
    """Load non-strictly (shapes must still agree), log and return (missing, unexpected) keys."""
    result = model.load_state_dict(_unwrap(state_dict), strict=False)
    if result.missing_keys:
        logger.warning("missing keys (left at their initial values): %s", ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("unexpected keys (ignored): %s", ", ".join(result.unexpected_keys))
    return list(result.missing_keys), list(result.unexpected_keys)
