"""Training checkpoints: which files a run keeps (current, best, every save_freq epochs), and
resumption with RNG states. The files themselves (atomic writes, SHA-256 sidecars, weights-only
reads) are `sifa.checkpoint_file`'s. The RNG states of every rank are stored so that training
continued from a checkpoint draws the same random numbers as an uninterrupted run.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..checkpoint_file import (checksum_path, copy_checkpoint_file, file_sha256, load_checkpoint, remove_if_present,
                               save_checkpoint_file)
from ..errors import CheckpointError

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
        remove_checkpoint(path)
        removed.append(path)
    return removed


def kept_checkpoints(save_freq: int, keep_last: int) -> str:
    """What a run keeps in its output folder, said in its log."""
    epochs = "all of them" if keep_last == 0 else f"the newest {keep_last}"
    return (f"checkpoints kept: {CURRENT} (each epoch, to resume), ckpt_epoch_N.pth every {save_freq} epoch(s) "
            f"(save_freq), {epochs} (keep_last), and {BEST} (weights only, of the best validation top1)")


def save_weights(path: str, model_state: Dict[str, torch.Tensor], **info: Any) -> str:
    """A weights-only file (``model`` and plain-data ``info`` such as epoch, top1, config; no optimizer
    state), written atomically with its SHA-256: safetensors when ``path`` ends with .safetensors, else
    PyTorch's format; --eval_only, predict and pretrained_model load either."""
    save_checkpoint_file({"model": model_state, **info}, path)
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


def run_checkpoints(output_dir: str) -> List[str]:
    """The checkpoints a training run left in ``output_dir``: current.pth, best.pth and ckpt_epoch_N.pth."""
    if not os.path.isdir(output_dir):
        return []
    return [name for name in (CURRENT, BEST) if os.path.isfile(os.path.join(output_dir, name))] + \
        [epoch_checkpoint_name(epoch) for epoch in saved_epochs(output_dir)]


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint and its SHA-256 file."""
    remove_if_present(checksum_path(path))
    os.remove(path)


def save_checkpoint(output_dir: str, epoch: int, save_freq: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Optional[torch.amp.GradScaler],
                    rng_states: List[Dict[str, Any]], config: Dict[str, Any], validation_due: bool = False) -> str:
    """Write current.pth, and ckpt_epoch_{epoch}.pth when epoch is a multiple of save_freq.

    ``validation_due``: the epoch's validation comes after this save; a run resumed from it runs the
    validation when the output folder has no result for the epoch (a kill or an error stopped it)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "rng": rng_states,
        "config": config,
        "validation_due": validation_due,
    }
    current = os.path.join(output_dir, CURRENT)
    digest = save_checkpoint_file(state, current)
    if epoch % save_freq == 0:
        copy_checkpoint_file(current, os.path.join(output_dir, epoch_checkpoint_name(epoch)), digest)
    return current


def restore_epoch_checkpoint(output_dir: str, epoch: int, save_freq: int) -> Optional[str]:
    """Copy current.pth (saved after ``epoch``) to ckpt_epoch_{epoch}.pth when save_freq asks for that file and
    it is missing (a kill interrupted its copy); returns its path when it was made."""
    path = os.path.join(output_dir, epoch_checkpoint_name(epoch))
    if epoch % save_freq or os.path.isfile(path):
        return None
    current = os.path.join(output_dir, CURRENT)
    copy_checkpoint_file(current, path, file_sha256(current))
    return path


def resume_path(resume: Any, output_dir: str) -> Optional[str]:
    """`resume: true` -> <output_dir>/current.pth; a string -> that path; false or '' -> None."""
    if resume is True:
        return os.path.join(output_dir, CURRENT)
    if isinstance(resume, str) and resume:
        return resume
    return None
