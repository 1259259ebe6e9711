"""Training checkpoints: atomic writes and resumption with RNG states.

A checkpoint holds only tensors and plain Python data, so `sifa.models.load_checkpoint` reads it
weights-only, without running pickled code; a SHA-256 file beside each (``sha256sum -c`` reads it)
lets the loader tell a damaged file. Files are written to a .tmp, flushed and renamed, so a kill or
a full disk never replaces a good checkpoint with a partial one. The RNG states of every rank are
stored so that training continued from a checkpoint draws the same random numbers as an uninterrupted
run.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..models.weights import CheckpointError, checksum_path, file_sha256, load_checkpoint

CURRENT = "current.pth"
BEST = "best.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"ckpt_epoch_{epoch}.pth"


def capture_rng_state() -> Dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (the previous one at that path is kept)."""


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_error(path: str, error: OSError, kept: str) -> CheckpointWriteError:
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    return CheckpointWriteError(f"cannot write checkpoint {path}: {error.strerror or error} ({free / 2**20:.0f} MiB "
                                f"free on its file system); the partial file was removed and {kept}")


def _publish(tmp: str, path: str, digest: str) -> None:
    """Move a written ``tmp`` to ``path`` and its SHA-256 beside it.

    The checksum goes through its own .tmp: a kill between the two renames leaves the new checkpoint with
    its new checksum still pending, which `remove_leftover_tmp` completes at the next start."""
    checksum = checksum_path(path)
    with open(checksum + ".tmp", "w", encoding="ascii") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    os.replace(tmp, path)
    os.replace(checksum + ".tmp", checksum)


def _atomic_save(obj: Any, path: str) -> str:
    """Write ``obj`` to ``path`` through ``path``.tmp, flushed to disk first; returns its SHA-256."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _remove_if_present(tmp)
        raise _write_error(path, e, "the previous checkpoint there is kept") from e
    digest = file_sha256(tmp)
    _publish(tmp, path, digest)
    return digest


def remove_leftover_tmp(output_dir: str) -> List[str]:
    """Remove the .tmp files of saves a kill interrupted; returns their names.

    A checksum whose checkpoint was already renamed into place (the kill fell between the two renames of
    `_publish`) is completed instead."""
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if not name.endswith(".tmp"):
            continue
        path = os.path.join(output_dir, name)
        target = path[:-len(".tmp")]
        checkpoint = target[:-len(".sha256")] if target.endswith(".sha256") else None
        if checkpoint and os.path.isfile(checkpoint) and _pending_checksum_matches(path, checkpoint):
            os.replace(path, target)
            continue
        _remove_if_present(path)
        removed.append(name)
    return removed


def _pending_checksum_matches(checksum_tmp: str, checkpoint: str) -> bool:
    with open(checksum_tmp, "r", encoding="ascii", errors="replace") as f:
        return f.read().split(maxsplit=1)[:1] == [file_sha256(checkpoint)]


def saved_epochs(output_dir: str) -> List[int]:
    """The N of every ckpt_epoch_N.pth in ``output_dir``, ascending."""
    return sorted(int(match.group(1)) for match in (re.fullmatch(r"ckpt_epoch_(\d+)\.pth", name)
                                                    for name in os.listdir(output_dir)) if match)


def remove_old_epoch_checkpoints(output_dir: str, keep_last: int) -> List[str]:
    """Remove all but the newest ``keep_last`` ckpt_epoch_N.pth (0 keeps all), with their SHA-256 files;
    returns the paths removed."""
    removed = []
    for epoch in saved_epochs(output_dir)[:-keep_last] if keep_last > 0 else []:
        path = os.path.join(output_dir, epoch_checkpoint_name(epoch))
        _remove_if_present(checksum_path(path))
        os.remove(path)
        removed.append(path)
    return removed


def save_weights(path: str, model_state: Dict[str, torch.Tensor], **info: Any) -> str:
    """A weights-only file (``model`` and plain-data ``info`` such as epoch, top1, config; no optimizer
    state), written atomically with its SHA-256; --eval_only, predict and pretrained_model load it."""
    _atomic_save({"model": model_state, **info}, path)
    return path


def newest_intact_epoch_checkpoint(output_dir: str) -> Optional[str]:
    """The ckpt_epoch_N.pth of the highest N in ``output_dir`` that loads, or None."""
    for epoch in reversed(saved_epochs(output_dir)):
        path = os.path.join(output_dir, epoch_checkpoint_name(epoch))
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def save_checkpoint(output_dir: str, epoch: int, save_freq: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Optional[torch.amp.GradScaler],
                    rng_states: List[Dict[str, Any]], config: Dict[str, Any]) -> str:
    """Write current.pth, and ckpt_epoch_{epoch}.pth when epoch is a multiple of save_freq."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "rng": rng_states,
        "config": config,
    }
    current = os.path.join(output_dir, CURRENT)
    digest = _atomic_save(state, current)
    if epoch % save_freq == 0:
        kept = os.path.join(output_dir, epoch_checkpoint_name(epoch))
        try:
            shutil.copyfile(current, kept + ".tmp")
        except OSError as e:
            _remove_if_present(kept + ".tmp")
            raise _write_error(kept, e, f"{current} is saved") from e
        _publish(kept + ".tmp", kept, digest)
    return current


def resume_path(resume: Any, output_dir: str) -> Optional[str]:
    """`resume: true` -> <output_dir>/current.pth; a string -> that path; false or '' -> None."""
    if resume is True:
        return os.path.join(output_dir, CURRENT)
    if isinstance(resume, str) and resume:
        return resume
    return None
