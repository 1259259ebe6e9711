"""Network weights from checkpoints: one unwrap, one load that names every mismatch.

A checkpoint (read by `sifa.checkpoint_file.load_checkpoint`) is a bare state dict or holds one under
``model`` (training checkpoints of this code and of the original, the official Swin release) or
``state_dict``; keys may carry the ``module.`` prefix of DistributedDataParallel.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from torch import Tensor, nn

from ..errors import CheckpointError, CheckpointMismatchError

logger = logging.getLogger(__name__)

StateDict = Dict[str, Tensor]
SHOWN_KEYS = 8  # keys named in a mismatch message before "(and N more)"


def state_dict_of(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> StateDict:
    """The network weights of a checkpoint in any of the layouts above, without the ``module.`` prefix.

    Weights that are not tensors named by strings (a damaged or foreign file) are a CheckpointError naming
    ``source``."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{source} holds no network weights: its entry {key!r} "
                                  f"({type(value).__name__}) is not a tensor named by a string")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _summary(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _mismatch_message(model: nn.Module, checkpoint: Mapping[str, Any], source: str, missing: List[str],
                      unexpected: List[str], wrong_shape: List[str]) -> str:
    name = getattr(model, "name", type(model).__name__)
    problems = []
    if missing:
        problems.append(f"missing keys: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summary(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches (checkpoint vs network): {_summary(wrong_shape)}")
    config = checkpoint.get("config")
    trained_as = config.get("net_name") if isinstance(config, Mapping) else None
    hint = ""
    if trained_as not in (None, name):
        hint = f"; the checkpoint was trained as {trained_as}"
    elif any("def_cor.weight" in entry for entry in wrong_shape):
        hint = "; def_cor.weight depends on the clip length: set remove_defcor_weight=true to drop it"
    return f"{source} does not fit {name}: " + "; ".join(problems) + hint


def load_weights(model: nn.Module, checkpoint: Mapping[str, Any], strict: bool = True, skip: Sequence[str] = (),
                 source: str = "checkpoint") -> Tuple[List[str], List[str]]:
    """Load the network weights of ``checkpoint`` into ``model``; returns (missing, unexpected) keys.

    Entries whose key ends with one of ``skip`` keep the network's values on both sides and are not
    reported (``def_cor.weight``, whose shape follows the clip length). Shapes must agree; with
    ``strict``, missing and unexpected keys are errors too, else they are logged. Every error is a
    CheckpointMismatchError naming the keys, with ``source`` (e.g. the file) in its message.
    """
    skip = tuple(skip)
    state = {k: v for k, v in state_dict_of(checkpoint, source).items() if not k.endswith(skip)}
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith(skip)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if wrong_shape or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(_mismatch_message(model, checkpoint, source, missing, unexpected,
                                                        wrong_shape))
    model.load_state_dict(state, strict=False)
    if missing:
        logger.info("%s: missing keys (left at their initial values): %s", source, ", ".join(missing))
    if unexpected:
        logger.info("%s: unexpected keys (ignored): %s", source, ", ".join(unexpected))
    return missing, unexpected
