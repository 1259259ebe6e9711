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
FAMILIES = ("resnet", "swin", "timm")


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
    config_keys: Tuple[str, ...] = ()  # config keys passed to its constructor as they are (e.g. sifa_stages)
    channels_last: bool = False  # runs in channels_last_3d on request (set_channels_last; the config's channels_last)
    # what the configuration asks beyond the options: (net_name, cfg) -> (key, problem) or None
    check: Optional[Callable[[str, SimpleNamespace], Optional[Tuple[str, str]]]] = None
    # the state-dict prefixes of the classifier(s) of the network named (remove_fc); None: the shipped networks'
    classifiers: Optional[Callable[[str], Tuple[str, ...]]] = None

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


def _constructor(fn: Callable[..., nn.Module], name: str, spec: ModelSpec) -> Callable[..., nn.Module]:
    """``fn`` taking keyword arguments, with the network's registry ``name`` and the spec's defaults for what
    the caller leaves out or passes as None; ``sifa_kernel`` dropped for a network without SIFA blocks."""
    @functools.wraps(fn)
    def constructor(**kwargs: Any) -> nn.Module:
        if spec.sifa_kernel is None:
            kwargs.pop("sifa_kernel", None)
        given = {key: value for key, value in kwargs.items() if value is not None}
        return fn(name=name, **{**spec.defaults(), **given})

    return constructor


def register_model(spec: ModelSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a network constructor under its function name, with ``spec``; the registered
    (and returned) constructor is :func:`_constructor`'s."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"network {fn.__name__!r} is registered twice")
        constructor = _constructor(fn, fn.__name__, spec)
        _MODELS[fn.__name__] = ModelEntry(fn.__name__, constructor, spec)
        return constructor

    return register


# name prefix -> (spec, constructor taking the rest of the name first): networks named by another library
_PREFIXES: Dict[str, Tuple[ModelSpec, Callable[..., nn.Module]]] = {}


def register_prefix(prefix: str, spec: ModelSpec, fn: Callable[..., nn.Module]) -> None:
    """Networks named ``<prefix><model>`` (e.g. ``timm/resnet18``), built by ``fn(model, **kwargs)``."""
    _PREFIXES[prefix] = (spec, fn)


def _lookup(net_name: str) -> Optional[ModelEntry]:
    if net_name in _MODELS:
        return _MODELS[net_name]
    for prefix, (spec, fn) in _PREFIXES.items():
        if net_name.startswith(prefix) and len(net_name) > len(prefix):
            constructor = _constructor(functools.partial(fn, net_name[len(prefix):]), net_name, spec)
            return ModelEntry(net_name, constructor, spec)
    return None


def _known_names() -> str:
    return ", ".join(list_models() + [f"{prefix}<name>" for prefix in _PREFIXES])


def model_entry(net_name: str) -> ModelEntry:
    """The registry entry of ``net_name``; a ValueError lists the known names."""
    entry = _lookup(net_name)
    if entry is None:
        raise ValueError(f"unknown network {net_name!r}; known: {_known_names()}")
    return entry


def list_models(family: Optional[str] = None) -> List[str]:
    """The registered names accepted by :func:`get_model_by_name` (of one family, if given), sorted; the
    prefixed ones (``timm/<name>``) come on top."""
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


def _specs() -> List[Tuple[str, ModelSpec]]:
    """(name, spec) of every registered network and prefix."""
    return [(name, entry.spec) for name, entry in _MODELS.items()] + \
        [(prefix + "<name>", spec) for prefix, (spec, _) in _PREFIXES.items()]


def model_options(cfg: SimpleNamespace) -> Dict[str, Any]:
    """The values of ``cfg`` for the options of any registered network (None: the network's default)."""
    keys = sorted({key for _, spec in _specs() for key in spec.options})
    return {key: getattr(cfg, key) for key in keys}


def model_arguments(cfg: SimpleNamespace) -> Dict[str, Any]:
    """The constructor arguments of ``cfg.net_name`` from ``cfg`` beyond the common ones: its options and
    config keys (the check rejects the others unless left at None or their default)."""
    spec = model_entry(cfg.net_name).spec
    options = {key: value for key, value in model_options(cfg).items() if key in spec.options}
    return {**options, **{key: getattr(cfg, key) for key in spec.config_keys}}


def check_model_config(cfg: SimpleNamespace) -> None:
    """A ConfigError naming the key when ``cfg`` asks ``cfg.net_name`` for what it does not take: an unknown
    network, clips laid out otherwise than C×T×H×W (time_dim), an option it lacks or a value outside its choices,
    SIFA kernel sizes of another design, frames of a size or clip length it cannot process."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{cfg.config_file}: key '{key}' {message}")

    entry = _lookup(cfg.net_name)
    if entry is None:
        fail("net_name", f"names an unknown network {shown(cfg.net_name)}; known: {_known_names()}")
    net, spec = cfg.net_name, entry.spec
    if cfg.time_dim != "T":
        fail("time_dim", f"is {shown(cfg.time_dim)} (frames concatenated along channels), but {net}, as every network "
                         f"here, takes C×T×H×W clips: set time_dim: T")
    for key, value in model_options(cfg).items():
        if key in spec.options:
            if value is not None and value not in spec.options[key]:
                fail(key, f"must be one of {list(spec.options[key])}, got {shown(value)}")
            continue
        holders = {name: holder for name, holder in _specs() if key in holder.options}
        if value is not None and all(value != holder.options[key][0] for holder in holders.values()):
            titles = " and ".join(sorted({holder.title for holder in holders.values()}))
            fail(key, f"is {shown(value)}, but only {titles} ({', '.join(sorted(holders))}) take it; "
                      f"net_name is {net!r}")
    for key in sorted({key for _, holder in _specs() for key in holder.config_keys} - set(spec.config_keys)):
        if getattr(cfg, key) is not None:
            takers = ", ".join(name for name, holder in _specs() if key in holder.config_keys)
            fail(key, f"is {shown(getattr(cfg, key))}, but only {takers} take it; net_name is {net!r}")
    if getattr(cfg, "channels_last", None) and not spec.channels_last:
        takers = ", ".join(name for name, holder in _specs() if holder.channels_last)
        fail("channels_last", f"is true, but only {takers} run channels-last (their SIFA calls copy NCTHW features "
                              f"otherwise); {net}'s are laid out by the network itself: set channels_last to null")
    problem = spec.check(net, cfg) if spec.check is not None else None
    if problem is not None:
        fail(*problem)
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
