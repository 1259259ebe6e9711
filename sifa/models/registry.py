"""The network registry: each network's constructor, family and ImageNet weight transfer, and the
factory of the original's API (docs/design.md §5.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from torch import nn

from .weights import StateDict

# (2-D ImageNet state dict, early stride) -> state dict of the video network
WeightTransfer = Callable[[StateDict, int], StateDict]
FAMILIES = ("resnet", "swin")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    family: str  # the 2-D architecture the network is built from, one of FAMILIES
    transfer: WeightTransfer  # maps that architecture's ImageNet weights onto the network


_MODELS: Dict[str, ModelEntry] = {}


def register_model(family: str, transfer: WeightTransfer) -> Callable[[Callable[..., nn.Module]],
                                                                       Callable[..., nn.Module]]:
    """Decorator: register a network constructor under its function name, with its family and transfer."""
    if family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; known: {', '.join(FAMILIES)}")

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"network {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__] = ModelEntry(fn.__name__, fn, family, transfer)
        return fn

    return register


def model_entry(net_name: str) -> ModelEntry:
    """The registry entry of ``net_name``; a ValueError lists the known names."""
    if net_name not in _MODELS:
        raise ValueError(f"unknown network {net_name!r}; known: {', '.join(list_models())}")
    return _MODELS[net_name]


def list_models(family: Optional[str] = None) -> List[str]:
    """Names accepted by :func:`get_model_by_name` (of one family, if given), sorted."""
    return sorted(name for name, entry in _MODELS.items() if family in (None, entry.family))


def get_model_by_name(net_name: str, pooling_arch: Optional[str] = None, num_classes: int = 400,
                      dropout_ratio: float = 0.5, clip_length: int = 16,
                      sifa_kernel: Optional[Sequence[int]] = None, **kw) -> nn.Module:
    """Build ``net_name``; ``clip_length`` is the total number of input frames of one view."""
    entry = model_entry(net_name)
    if pooling_arch is not None:
        raise ValueError(f"pooling_arch {pooling_arch!r} is not supported: only None (global average pooling)")
    return entry.constructor(num_classes=num_classes, dropout_ratio=dropout_ratio, clip_length=clip_length,
                             sifa_kernel=sifa_kernel, **kw)
