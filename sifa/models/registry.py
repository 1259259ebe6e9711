"""Name -> constructor registry of the networks, and the factory of the original's API (SPEC §6)."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from torch import nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a network constructor under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"network {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> List[str]:
    """Names accepted by :func:`get_model_by_name`, sorted."""
    return sorted(_MODELS)


def get_model_by_name(net_name: str, pooling_arch: Optional[str] = None, num_classes: int = 400,
                      dropout_ratio: float = 0.5, clip_length: int = 16,
                      sifa_kernel: Optional[Sequence[int]] = None, **kw) -> nn.Module:
    """Build ``net_name``; ``clip_length`` is the total number of input frames of one view."""
    if net_name not in _MODELS:
        raise ValueError(f"unknown network {net_name!r}; known: {', '.join(list_models())}")
    if pooling_arch is not None:
        raise ValueError(f"pooling_arch {pooling_arch!r} is not supported: only None (global average pooling)")
    return _MODELS[net_name](num_classes=num_classes, dropout_ratio=dropout_ratio, clip_length=clip_length,
                             sifa_kernel=sifa_kernel, **kw)
