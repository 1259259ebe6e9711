"""Networks as a configuration asks for them: built, initialised from ImageNet or loaded from a checkpoint."""
from __future__ import annotations

from types import SimpleNamespace
from typing import List

import torch
from torch import nn

from .registry import get_model_by_name
from .transfer import DEFCOR_WEIGHT, remove_fc, transfer_weights
from .weights import load_checkpoint, load_weights


def build_model(cfg: SimpleNamespace, num_segments: int) -> nn.Module:
    """``cfg.net_name`` for views of ``num_segments`` segments of ``cfg.clip_length`` frames."""
    return get_model_by_name(cfg.net_name, pooling_arch=None, num_classes=cfg.num_classes,
                             dropout_ratio=cfg.dropout_ratio, clip_length=num_segments * cfg.clip_length,
                             sifa_kernel=cfg.sifa_kernel)


def _skipped(cfg: SimpleNamespace) -> tuple:
    return (DEFCOR_WEIGHT,) if cfg.remove_defcor_weight else ()


def load_pretrained(model: nn.Module, cfg: SimpleNamespace) -> None:
    """Initialise ``model`` from ``cfg.pretrained_model``: transferred from 2-D ImageNet weights if
    ``transfer_weights``, without the classifiers if ``remove_fc``; missing and unexpected keys are logged."""
    state = load_checkpoint(cfg.pretrained_model)
    if cfg.transfer_weights:
        state = transfer_weights(cfg.net_name, state)
    if cfg.remove_fc:
        state = remove_fc(cfg.net_name, state)
    load_weights(model, state, strict=False, skip=_skipped(cfg), source=f"pretrained model {cfg.pretrained_model}")


def load_network(cfg: SimpleNamespace, checkpoint: str, device: torch.device) -> nn.Module:
    """The configured network (at eva_num_segments) with every weight from ``checkpoint``, in eval mode."""
    model = build_model(cfg, cfg.eva_num_segments)
    load_weights(model, load_checkpoint(checkpoint), strict=True, skip=_skipped(cfg), source=f"checkpoint {checkpoint}")
    return model.to(device).eval()


def freeze_bn(model: nn.Module) -> List[nn.Module]:
    """Freeze every BatchNorm but the first (statistics and affine parameters), as the original does."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in norms[1:]:
        for parameter in module.parameters():
            parameter.requires_grad = False
    return norms[1:]
