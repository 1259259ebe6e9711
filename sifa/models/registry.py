"""The network registry: each network's constructor, and the spec of its design (family, ImageNet
weight transfer, the options and input sizes it accepts), and the factory of the original's API
(docs/design.md §5.3). What a configuration may ask of a network is checked here
(:func:`check_model_config`), against the spec.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..errors import ConfigError, shown
from .weights import StateDict

# (2-D ImageNet state dict, early stride) -> state dict of the video network
WeightTransfer = Callable[[StateDict, int], StateDict]
FAMILIES = ("resnet", "swin")


@dataclass(frozen=True)
class ModelSpec:
    """What the networks of one design share: their 2-D family and its weight transfer, the constructor
    options beyond the common ones, and the inputs they take."""
    title: str  # how messages name these networks, e.g. "the SIFA ResNets"
    family: str  # the 2-D architecture the networks are built from, one of FAMILIES
    transfer: WeightTransfer  # maps that architecture's ImageNet weights onto the network
    sifa_kernel: Optional[Tuple[int, ...]] = None  # default SIFA kernel sizes (as many as a setting must give);
    # None: no SIFA blocks, and a given sifa_kernel is unused (one config drives every network)
    options: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # option -> choices, the first the default
    clip_divisor: int = 1  # the frames of a view (clip_length) must be a multiple of it
    window_grid_size: Optional[int] = None  # the one frame size (square) its attention windows are laid out for
    output_stride: int = 1  # pixels per position of its last stage: the smallest frame size it takes

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown network family {self.family!r}; known: {', '.join(FAMILIES)}")

    def defaults(self) -> Dict[str, Any]:
        """Each option's default, and the default SIFA kernel sizes of a SIFA network."""
        defaults: Dict[str, Any] = {key: choices[0] for key, choices in self.options.items()}
        if self.sifa_kernel is not None:
            defaults["sifa_kernel"] = list(self.sifa_kernel)
        return defaults


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    spec: ModelSpec

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def transfer(self) -> WeightTransfer:
        return self.spec.transfer


_MODELS: Dict[str, ModelEntry] = {}


def register_model(spec: ModelSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a network constructor under its function name, with ``spec``.

    The registered (and returned) constructor takes keyword arguments; it gives the network its registry
    name and the spec's defaults for what the caller leaves out or passes as None, and drops
    ``sifa_kernel`` for a network without SIFA blocks."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"network {fn.__name__!r} is registered twice")

        @functools.wraps(fn)
        def constructor(**kwargs: Any) -> nn.Module:
            if spec.sifa_kernel is None:
                kwargs.pop("sifa_kernel", None)
            given = {key: value for key, value in kwargs.items() if value is not None}
            return fn(name=fn.__name__, **{**spec.defaults(), **given})

        _MODELS[fn.__name__] = ModelEntry(fn.__name__, constructor, spec)
        return constructor

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
    """Build ``net_name``; ``clip_length`` is the total number of input frames of one view. ``sifa_kernel``
    and the options in ``kw`` default (when None) to the network's own."""
    entry = model_entry(net_name)
    if pooling_arch is not None:
        raise ValueError(f"pooling_arch {pooling_arch!r} is not supported: only None (global average pooling)")
    return entry.constructor(num_classes=num_classes, dropout_ratio=dropout_ratio, clip_length=clip_length,
                             sifa_kernel=sifa_kernel, **kw)


def model_options(cfg: SimpleNamespace) -> Dict[str, Any]:
    """The values of ``cfg`` for the options of any registered network (None: the network's default)."""
    keys = sorted({key for entry in _MODELS.values() for key in entry.spec.options})
    return {key: getattr(cfg, key) for key in keys}


def check_model_config(cfg: SimpleNamespace) -> None:
    """A ConfigError naming the key when ``cfg`` asks ``cfg.net_name`` for what it does not take: an unknown
    network, clips laid out otherwise than C×T×H×W (time_dim), an option it lacks or a value outside its choices,
    SIFA kernel sizes of another design, frames of a size or clip length it cannot process."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{cfg.config_file}: key '{key}' {message}")

    if cfg.net_name not in _MODELS:
        fail("net_name", f"names an unknown network {shown(cfg.net_name)}; known: {', '.join(list_models())}")
    net, spec = cfg.net_name, _MODELS[cfg.net_name].spec
    if cfg.time_dim != "T":
        fail("time_dim", f"is {shown(cfg.time_dim)} (frames concatenated along channels), but {net}, as every network "
                         f"here, takes C×T×H×W clips: set time_dim: T")
    for key, value in model_options(cfg).items():
        if key in spec.options:
            if value is not None and value not in spec.options[key]:
                fail(key, f"must be one of {list(spec.options[key])}, got {shown(value)}")
            continue
        holders = {name: entry.spec for name, entry in _MODELS.items() if key in entry.spec.options}
        if value is not None and all(value != holder.options[key][0] for holder in holders.values()):
            titles = " and ".join(sorted({holder.title for holder in holders.values()}))
            fail(key, f"is {shown(value)}, but only {titles} ({', '.join(sorted(holders))}) take it; "
                      f"net_name is {net!r}")
    kernel = cfg.sifa_kernel
    if spec.sifa_kernel is not None and kernel is not None and len(kernel) != len(spec.sifa_kernel):
        fail("sifa_kernel", f"must list {len(spec.sifa_kernel)} kernel size(s) for {net} ({spec.title}; default "
                            f"{list(spec.sifa_kernel)}), got {shown(kernel)}")
    for key in ("crop_size", "eva_crop_size"):
        size = getattr(cfg, key)
        if spec.window_grid_size is not None and size != spec.window_grid_size:
            fail(key, f"must be {spec.window_grid_size} for {net} (its windows are laid out for "
                      f"{spec.window_grid_size}² frames), got {size}")
        if size < spec.output_stride:
            fail(key, f"must be at least {spec.output_stride} for {net} (its output stride; smaller frames leave the "
                      f"last stages only padding), got {size}")
    for key in ("num_segments", "eva_num_segments"):
        frames = getattr(cfg, key) * cfg.clip_length
        if frames % spec.clip_divisor:
            fail("clip_length", f"({cfg.clip_length}) × {key} ({getattr(cfg, key)}) = {frames} frames per view, "
                                f"but {net} needs a multiple of {spec.clip_divisor} (its temporal strides)")
