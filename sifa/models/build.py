"""Networks as a configuration asks for them: built, initialised from ImageNet or loaded from a checkpoint."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..checkpoint_file import load_checkpoint, non_finite_entries
from ..config import DEFAULT_CONFIG, load_config
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from .memory_format import default_channels_last
from .registry import check_model_config, get_model_by_name, model_arguments, model_entry
from .transfer import DEFCOR_WEIGHT, remove_fc, transfer_weights
from .weights import load_weights

# The 2-D ImageNet weights `transfer_weights: true` takes, per network family: the file the shipped
# settings name, where it is published, and the layouts the transfer reads.
IMAGENET_WEIGHTS = {
    "resnet": "torchvision's ImageNet ResNet-50, resnet50-19c8e357.pth "
              "(https://download.pytorch.org/models/resnet50-19c8e357.pth; torchvision's "
              "ResNet50_Weights.IMAGENET1K_V1, downloaded as resnet50-0676ba61.pth, and timm's resnet50.tv_in1k "
              "hold the same weights; for ResNet-101 resnet101-5d3b4d8f.pth there); the transfer reads torchvision's layout (a bare state dict, "
              "or one under 'model' or 'state_dict')",
    "swin": "the official Swin Transformer release of the network's size, e.g. swin_base_patch4_window7_224.pth "
            "for Swin-B, as the shipped setting names it "
            "(https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224.pth; "
            "the ImageNet-22k ..._22k.pth files there transfer too; timm names them "
            "swin_base_patch4_window7_224.ms_in1k / .ms_in22k); the transfer reads the official layout (under "
            "'model', patch merging at the end of each stage) and timm's (patch merging at the start of the next)",
    "timm": "the 2-D network's own ImageNet weights: timm:<name> (timm's pretrained mechanism, e.g. "
            "timm:resnet18.a1_in1k) or a local file of its timm state dict with transfer_weights: true",
}
TIMM_PREFIX = "timm:"  # pretrained_model: timm:<name>, ImageNet weights by timm's name


def uses_channels_last(cfg: SimpleNamespace, device: Optional[torch.device | str] = None) -> bool:
    """Whether the network runs in channels_last_3d on ``device``: ``cfg.channels_last``, or when null, the
    default for the device (on for CUDA, off on the CPU), for the networks that take it (the C2D ResNets)."""
    if not model_entry(cfg.net_name).spec.channels_last:
        return False
    choice = getattr(cfg, "channels_last", None)
    return default_channels_last(device) if choice is None else bool(choice)


def build_model(cfg: SimpleNamespace, num_segments: int, device: Optional[torch.device | str] = None) -> nn.Module:
    """``cfg.net_name`` for views of ``num_segments`` segments of ``cfg.clip_length`` frames, with
    activation checkpointing per stage if ``cfg.use_checkpoint``, in channels_last_3d per
    :func:`uses_channels_last` for ``device`` (where it will run); a ConfigError if the network does not take
    what ``cfg`` asks of it (:func:`check_model_config`)."""
    check_model_config(cfg)
    model = get_model_by_name(cfg.net_name, pooling_arch=None, num_classes=cfg.num_classes,
                              dropout_ratio=cfg.dropout_ratio, clip_length=num_segments * cfg.clip_length,
                              sifa_kernel=cfg.sifa_kernel, **model_arguments(cfg))
    model.set_grad_checkpointing(cfg.use_checkpoint)
    if uses_channels_last(cfg, device):
        model.set_channels_last(True)
    return model


def _skipped(cfg: SimpleNamespace) -> tuple:
    return (DEFCOR_WEIGHT,) if cfg.remove_defcor_weight else ()


def timm_pretrained_weights(name: str) -> dict:
    """The weights timm's ``create_model(name, pretrained=True)`` loads, through its own mechanism: from the
    Hugging Face cache (HF_HUB_CACHE, HF_HOME), downloaded there first unless HF_HUB_OFFLINE=1."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"pretrained_model timm:{name}: timm {timm.__version__} has no model {name!r} "
                          f"(timm.list_pretrained() lists the names with weights, e.g. resnet50.tv_in1k)")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except RuntimeError as e:  # e.g. an unknown pretrained tag
        raise ConfigError(f"pretrained_model timm:{name}: {e}") from None
    except OSError as e:  # not in the cache and no download (offline, no network)
        raise CheckpointNotFoundError(f"pretrained_model timm:{name}: timm could not load its weights: {e} (with "
                                      f"HF_HUB_OFFLINE=1 they must already be in the Hugging Face cache)") from None


def load_pretrained(model: nn.Module, cfg: SimpleNamespace) -> None:
    """Initialise ``model`` from ``cfg.pretrained_model``: transferred from 2-D ImageNet weights if
    ``transfer_weights``, without the classifiers if ``remove_fc``; missing and unexpected keys are logged.
    ``timm:<name>`` takes timm's pretrained weights of that name (:func:`timm_pretrained_weights`): 2-D
    ImageNet weights, always transferred."""
    if cfg.pretrained_model.startswith(TIMM_PREFIX):
        state, transfer = timm_pretrained_weights(cfg.pretrained_model[len(TIMM_PREFIX):]), True
    elif os.path.isfile(cfg.pretrained_model):
        state, transfer = load_checkpoint(cfg.pretrained_model), cfg.transfer_weights
    else:
        expected = IMAGENET_WEIGHTS[model_entry(cfg.net_name).family]
        raise CheckpointNotFoundError(
            f"pretrained_model not found: {cfg.pretrained_model}; for {cfg.net_name} with transfer_weights: true it "
            f"is {expected}. Download it there, or set pretrained_model to another checkpoint of this code, or to '' "
            f"to train from scratch (docs/training.md, 'ImageNet initialisation')")
    if transfer:
        state = transfer_weights(cfg.net_name, state)
    if cfg.remove_fc:
        state = remove_fc(cfg.net_name, state)
    load_weights(model, state, strict=False, skip=_skipped(cfg), source=f"pretrained model {cfg.pretrained_model}")


def check_finite_weights(model: nn.Module, checkpoint: str) -> None:
    """A CheckpointError when the weights loaded from ``checkpoint`` hold NaN or infinite values (a diverged run's):
    every score of the network would be NaN, which evaluation, predict, visualize and export must not pass on."""
    non_finite = non_finite_entries(model.state_dict())
    if non_finite:
        raise CheckpointError(f"checkpoint {checkpoint}: {len(non_finite)} of the network's tensors hold NaN or "
                              f"infinite values (the first: {non_finite[0]}), as a run that diverged leaves them; "
                              f"use an earlier checkpoint")


def load_network(cfg: SimpleNamespace, checkpoint: str, device: torch.device) -> nn.Module:
    """The configured network (at eva_num_segments) with every weight from ``checkpoint``, in eval mode; a
    CheckpointError when a weight is not finite."""
    model = build_model(cfg, cfg.eva_num_segments, device)
    load_weights(model, load_checkpoint(checkpoint), strict=True, skip=_skipped(cfg), source=f"checkpoint {checkpoint}")
    check_finite_weights(model, checkpoint)
    return model.to(device).eval()


def freeze_bn(model: nn.Module) -> List[nn.Module]:
    """Freeze every BatchNorm but the first, as the original does, and return them: their affine parameters
    stop training (requires_grad False) and their running statistics stop updating (eval mode: they normalise
    with the statistics they hold). ``model.train()`` puts them back in training mode, so the trainer sets
    them to eval again after it. A network without BatchNorm (SIFA-Swin: LayerNorms only) is a ConfigError."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(norms) < 2:
        raise ConfigError(f"frozen_bn is true, but {getattr(model, 'name', type(model).__name__)} has no BatchNorm "
                          f"after its first to freeze (the Swins' norms are LayerNorms); set frozen_bn: false")
    for module in norms[1:]:
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad = False
    return norms[1:]


def network_from_checkpoint(checkpoint: str, device: torch.device | str = "cpu") -> Tuple[nn.Module, SimpleNamespace]:
    """The network a weights file (or training checkpoint) of this code was trained as, rebuilt from the file
    alone, from the config saved in it (keys it lacks: sifa/base_config/default.yml's), with every weight
    loaded, in eval mode at eva_num_segments; returns (network, config)."""
    content = load_checkpoint(checkpoint)
    saved = content.get("config")
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{checkpoint} holds no config (only files this code wrote do): the network cannot be "
                              f"rebuilt from it alone; give the experiment's YAML as well")
    cfg = load_config(DEFAULT_CONFIG)
    vars(cfg).update({key: value for key, value in saved.items() if key in vars(cfg)})
    model = build_model(cfg, cfg.eva_num_segments, device)
    load_weights(model, content, strict=True, skip=_skipped(cfg), source=f"checkpoint {checkpoint}")
    check_finite_weights(model, checkpoint)
    return model.to(device).eval(), cfg
