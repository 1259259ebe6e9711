"""Network weights from checkpoints: one file reader, one unwrap, one load that names every mismatch.

A checkpoint is a bare state dict or holds one under ``model`` (training checkpoints of this code
and of the original, the official Swin release) or ``state_dict``; keys may carry the ``module.``
prefix of DistributedDataParallel. Files are read weights-only: no pickled code runs.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

StateDict = Dict[str, Tensor]
SHOWN_KEYS = 8  # keys named in a mismatch message before "(and N more)"
ZIP_MAGIC = b"PK\x03\x04"  # how the files of torch.save begin


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: unreadable, damaged, or not what the run needs."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose entries do not fit the network."""


def checksum_path(path: str | os.PathLike) -> str:
    """The SHA-256 file written beside a checkpoint (``sha256sum -c`` reads it)."""
    return os.fspath(path) + ".sha256"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike) -> None:
    """A CheckpointError when ``path`` differs from the SHA-256 saved beside it; files without one pass."""
    sidecar = checksum_path(path)
    if not os.path.isfile(sidecar):
        return
    with open(sidecar, "r", encoding="ascii", errors="replace") as f:
        expected = f.read().split(maxsplit=1)[:1]
    if expected != [file_sha256(path)]:
        raise CheckpointError(f"{path} does not match the SHA-256 in {sidecar}: the file was changed or damaged "
                              f"after it was saved")


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """The checkpoint file's contents on the CPU; the original's checkpoints also hold an argparse.Namespace.

    An empty, truncated, damaged or foreign file, or one that fails its SHA-256, raises one CheckpointError
    naming the file and the problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the save that wrote it did not finish")
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run the file's pickled code: not repeated.
        if "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain data; it is not "
                                  f"loaded, since unpickling them could run arbitrary code") from None
        problem = "is damaged" if is_zip else "is not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {problem} ({size} bytes)") from None
    except Exception:  # arbitrary bytes make the unpickler fail in arbitrary ways (KeyError, IndexError, ...)
        problem = "is truncated or damaged (an incomplete zip archive)" if is_zip else "is not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {problem} ({size} bytes)") from None
    # After the read, so that a file that does not even load is described as such.
    verify_checksum(path)
    return checkpoint


def state_dict_of(checkpoint: Mapping[str, Any]) -> StateDict:
    """The network weights of a checkpoint in any of the layouts above, without the ``module.`` prefix."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
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
    state = {k: v for k, v in state_dict_of(checkpoint).items() if not k.endswith(skip)}
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
