"""YAML configuration: `sifa/base_config/default.yml` <- the experiment's `base:` file <- the experiment.

Sections (`dataset`, `sampler`, ...) only group keys; the merged leaves form one flat namespace,
as in the original (whose own settings file `resume` and `eva_model` under `network:`). Every key
must be declared in the default file, and a value must have the type of its default (an int is
accepted where a float is expected); the original's keys that nothing here reads are accepted,
dropped and warned about (IGNORED_KEYS). Errors name the key, the file that set it and the closest
known key. `check_run_inputs` adds what a run needs beyond valid values, before any work starts.

This module knows YAML types and its own keys only: what a network accepts (its options, SIFA kernel
sizes, frame size, clip length) is the network registry's, checked by `sifa.models.check_model_config`
when the network is built. Loading a setting imports neither the networks nor the compiled operator.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from .errors import ConfigError, shown
from .user_files import folder_write_problem, read_text

# The folder holding `base_config/` (package data): `base: base_config/x.yml` resolves there from any directory.
CONFIG_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_ROOT / "base_config" / "default.yml"

# The original's keys that nothing reads here: accepted in its files, dropped with a warning.
IGNORED_KEYS: Dict[str, str] = {
    "val_video_num": "the evaluation counts the videos of eva_list_file",
    "num_gpu": "the number of processes is the launcher's (--nproc_per_node); set reference_batch and "
               "auto_scale_lr: true to rescale base_learning_rate",
}
# Keys whose values may take more than the type of their default; the network's keys default to null (the
# network's own value, from its registry entry) and take a list or a string.
_EXTRA_TYPES: Dict[str, Tuple[type, ...]] = {
    "resume": (bool, str),
    "sifa_kernel": (list, type(None)),
    "sifa_stages": (list, type(None)),
    "offset_mode": (str, type(None)),
    "offset_guide": (str, type(None)),
    "offset_init": (str, type(None)),
    "channels_last": (bool, type(None)),
    "temporal_shift": (str, type(None)),
    "min_crop_scale": (float, int),
}
# Keys restricted to a set of values.
_CHOICES: Dict[str, Tuple[Any, ...]] = {
    "time_dim": ("T", "C"),
    "format": ("FRAME", "LMDB", "VIDEO"),
    "video_backend": ("opencv", "pyav", "torchcodec"),
    "lr_scheduler": ("cosine", "step"),
    "eva_num_crop": (1, 3),
    "dataset_class": ("video_dataset",),
    "pooling_name": ("PoolingAverage",),
    "amp": ("fp16", "bf16", "none"),
}
_POSITIVE = ("crop_size", "eva_crop_size", "num_classes", "epochs", "num_clips", "num_segments",
             "clip_length", "num_steps", "eva_num_segments", "eva_num_clips", "batch_size",
             "iter_size", "print_freq", "save_freq", "eva_inter_freq", "warmup_multiplier",
             "synthetic_frames", "synthetic_size")
_NON_NEGATIVE = ("num_workers", "warmup_epoch", "ra_n", "weight_decay", "clip_gradient", "reference_batch",
                 "keep_last", "synthetic_videos_per_class", "synthetic_val_videos_per_class", "synthetic_seed")
SEEDS = 2**32  # NumPy's seeds are below this (each rank adds its rank, modulo this)
MAX_SYNTHETIC_VIDEO_BYTES = 2**30  # a synthetic video is drawn in memory
# Values of a document with every alias written out: a setting holds about a hundred; more is an alias bomb.
MAX_DOCUMENT_VALUES = 10_000
MERGE_TAG = "tag:yaml.org,2002:merge"


def _expanded_values(node: yaml.Node, counted: Dict[int, float]) -> float:
    """The nodes under ``node`` (itself included) with every alias written out; an alias reuses its anchor's node
    object, so each node is counted once, and one inside its own anchor expands without end."""
    if id(node) not in counted:
        counted[id(node)] = math.inf  # until counted: reached again only through itself
        children = [child for item in node.value for child in (item if isinstance(item, tuple) else (item,))] \
            if isinstance(node, yaml.CollectionNode) else []
        counted[id(node)] = 1 + sum(_expanded_values(child, counted) for child in children)
    return counted[id(node)]


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated inside one mapping is an error (PyYAML keeps the last), and a
    document that expands to more than MAX_DOCUMENT_VALUES values through aliases is refused before it is built."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_values(node, {}) > MAX_DOCUMENT_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the document expands to more than {MAX_DOCUMENT_VALUES} values (YAML aliases repeating "
                            f"nodes?); a setting holds about a hundred", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # `<<: *anchor`: the keys written beside it override the merged ones (YAML's merge key)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) requires a dot in a float, so `1e-3` would load as a string; YAML 1.2 does not.
_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _one_line(error: yaml.YAMLError) -> str:
    """The problem and its line: YAML's own message spans lines and quotes the text around the mark."""
    if not isinstance(error, yaml.MarkedYAMLError) or not error.problem:
        return " ".join(str(error).split())
    context = f"{error.context}: " if error.context else ""
    mark = error.problem_mark
    return f"{context}{error.problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")


def _load_yaml(text: str, name: str) -> Any:
    loader = ConfigLoader(text)
    loader.name = name  # what its error marks name, e.g. the file; "<unicode string>" otherwise
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> Dict[str, Any]:
    text = read_text(path, "config file", ConfigError)
    try:
        data = _load_yaml(text, str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections or keys")
    return data


def _flatten(data: Dict[str, Any], source: str, allow_base: bool,
             sections: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Leaves of a (possibly sectioned) mapping; a leaf set twice in one file is an error. ``sections`` are the
    default file's: one written without keys (all commented out) sets nothing."""
    flat: Dict[str, Any] = {}

    def visit(mapping: Dict[str, Any], top: bool) -> None:
        for key, value in mapping.items():
            if top and key == "base" and allow_base:
                continue
            if isinstance(value, dict):
                visit(value, False)
            elif key in sections:
                if value is not None:
                    raise ConfigError(f"{source}: section '{key}' must hold keys (e.g. {next(iter(sections[key]))}: "
                                      f"...), got {shown(value)}")
            elif key in flat:
                raise ConfigError(f"{source}: key {shown(key)} is set more than once")
            else:
                flat[key] = value

    visit(data, True)
    return flat


def _closest(key: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    allowed = _EXTRA_TYPES.get(key, (type(default),))
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise ConfigError(f"{source}: key '{key}' must be of type {names}, got {type(value).__name__} "
                          f"({shown(value)})")
    if isinstance(default, list) and isinstance(value, list) and default:
        item_type = type(default[0])
        for item in value:
            if not isinstance(item, item_type) or isinstance(item, bool):
                raise ConfigError(f"{source}: key '{key}' must be a list of {item_type.__name__}, "
                                  f"got {shown(value)}")
    return value


def _resolve_base(base: str, experiment: Path) -> Path:
    candidates = [Path(base), experiment.parent / base, CONFIG_ROOT / base]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{experiment}: base file '{base}' not found (looked in the working directory, "
                      f"next to the experiment and in {CONFIG_ROOT})")


def parse_override(text: str) -> Tuple[str, Any]:
    """`key=value` with the value read as YAML (`lr=0.1`, `sifa_kernel=[1,3,3,3]`, `resume=true`)."""
    if "=" not in text:
        raise ConfigError(f"--opts: expected key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, "--opts") if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--opts: cannot read the value of {shown(key)}: {_one_line(e)}") from None
    return key.strip(), value


def load_config(config_file: str | os.PathLike, overrides: Iterable[str] = (),
                default_file: str | os.PathLike = DEFAULT_CONFIG) -> SimpleNamespace:
    """Merge default <- base <- experiment <- `key=value` overrides into a flat namespace."""
    default_path = Path(default_file)
    experiment_path = Path(config_file)
    default_data = _read_yaml(default_path)
    sections = {key: value for key, value in default_data.items() if isinstance(value, dict)}
    defaults = _flatten(default_data, str(default_path), allow_base=False, sections={})
    experiment = _read_yaml(experiment_path)

    layers: List[Tuple[str, Dict[str, Any]]] = []
    base = experiment.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{experiment_path}: 'base' must be a file path, got {shown(base)}")
        base_path = _resolve_base(base, experiment_path)
        base_data = _read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(f"{base_path}: a base file cannot itself name a 'base'")
        layers.append((str(base_path), _flatten(base_data, str(base_path), allow_base=False, sections=sections)))
    layers.append((str(experiment_path), _flatten(experiment, str(experiment_path), allow_base=True,
                                                  sections=sections)))
    layers.append(("--opts", dict(parse_override(o) for o in overrides)))

    merged = dict(defaults)
    sources = {key: str(default_path) for key in defaults}
    for source, flat in layers:
        for key, value in flat.items():
            if key in IGNORED_KEYS:
                warnings.warn(f"{source}: key '{key}' is ignored: {IGNORED_KEYS[key]}", stacklevel=2)
                continue
            if key not in defaults:
                raise ConfigError(f"{source}: unknown key {shown(key)}{_closest(str(key), defaults)}")
            merged[key] = _check_type(key, value, defaults[key], source)
            sources[key] = source
    _validate(merged, sources)
    merged["config_file"] = str(experiment_path)
    return SimpleNamespace(**merged)


def _validate(cfg: Dict[str, Any], sources: Dict[str, str]) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{sources[key]}: key '{key}' {message}")

    for key, value in cfg.items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
            fail(key, f"must be a finite number, got {shown(value)}")
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            fail(key, f"must be one of {list(choices)}, got {shown(cfg[key])}")
    for key in _POSITIVE:
        if cfg[key] <= 0:
            fail(key, f"must be positive, got {shown(cfg[key])}")
    for key in _NON_NEGATIVE:
        if cfg[key] < 0:
            fail(key, f"must not be negative, got {shown(cfg[key])}")
    if cfg["use_flow"]:
        fail("use_flow", "is not supported: this implementation reads RGB frames only")
    if not 0 <= cfg["ra_m"] <= 30:
        fail("ra_m", f"must lie in [0, 30] (RandAugment magnitude), got {cfg['ra_m']}")
    if not 0.0 <= cfg["dropout_ratio"] < 1.0:
        fail("dropout_ratio", f"must lie in [0, 1), got {cfg['dropout_ratio']}")
    kernel = cfg["sifa_kernel"]
    if kernel is not None and (not kernel or not all(isinstance(k, int) and k > 0 for k in kernel)):
        fail("sifa_kernel", f"must be null or a list of positive ints, got {shown(kernel)}")
    stages = cfg["sifa_stages"]
    if stages is not None and not all(isinstance(s, (int, str)) and not isinstance(s, bool) for s in stages):
        fail("sifa_stages", f"must be null or a list of stage indices or names, got {shown(stages)}")
    for key in ("base_learning_rate", "lr_decay_rate", "loss_weight"):
        if cfg[key] <= 0:
            fail(key, f"must be positive, got {shown(cfg[key])}")
    if cfg["auto_scale_lr"] and cfg["reference_batch"] <= 0:
        fail("reference_batch", "must be positive when auto_scale_lr is true (the effective batch that "
                                "base_learning_rate is set for)")
    if not 0.0 < cfg["min_crop_scale"] <= 1.0:
        fail("min_crop_scale", f"must lie in (0, 1], got {shown(cfg['min_crop_scale'])}")
    if not 0.0 <= cfg["momentum"] < 1.0:
        fail("momentum", f"must lie in [0, 1), got {shown(cfg['momentum'])}")
    if not cfg["output_dir"].strip():
        fail("output_dir", "is empty: checkpoints and logs need a folder")
    if not 0 <= cfg["seed"] < SEEDS:
        fail("seed", f"must lie in [0, 2**32) (NumPy's seeds), got {shown(cfg['seed'])}")
    video_bytes = cfg["synthetic_frames"] * cfg["synthetic_size"] ** 2 * 3
    if video_bytes > MAX_SYNTHETIC_VIDEO_BYTES:
        fail("synthetic_frames", f"({shown(cfg['synthetic_frames'])}) of {cfg['synthetic_size']}² RGB pixels make "
                                 f"synthetic videos of {video_bytes / 2**30:.3g} GiB each, drawn in memory: at most "
                                 f"{MAX_SYNTHETIC_VIDEO_BYTES // 2**30} GiB")


def check_run_inputs(cfg: SimpleNamespace, eval_checkpoint: Optional[str] = None) -> None:
    """What a run reads and writes, checked before any process group or data loading: training
    (``eval_checkpoint`` None) needs list_file, and eva_list_file when eva_inter; evaluation needs eva_list_file
    and a checkpoint (``eval_checkpoint``, or eva_model when that is empty); then output_dir must take files (it
    is made if absent: last, so that a run refused for its inputs leaves nothing behind)."""
    def fail(message: str) -> None:
        raise ConfigError(f"{cfg.config_file}: {message}")

    if eval_checkpoint is None:
        if not cfg.list_file:
            fail("list_file is empty: training needs a list of videos")
        if cfg.eva_inter and not cfg.eva_list_file:
            fail("eva_inter is true but eva_list_file is empty")
    else:
        if not cfg.eva_list_file:
            fail("eva_list_file is empty: evaluation needs a list of videos")
        if not (eval_checkpoint or cfg.eva_model):
            fail("--eval_only needs a checkpoint: pass a path or set eva_model")
    problem = folder_write_problem(cfg.output_dir, create=True)
    if problem:
        fail(f"key 'output_dir' {shown(cfg.output_dir)}: cannot write in this folder: {problem}")


def config_to_dict(cfg: SimpleNamespace) -> Dict[str, Any]:
    """Plain data (str/int/float/bool/list/None): JSON-serialisable and safe in a weights-only checkpoint."""
    return json.loads(json.dumps(vars(cfg)))


def save_config_json(cfg: SimpleNamespace, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config_to_dict(cfg), f, indent=2, sort_keys=True)
