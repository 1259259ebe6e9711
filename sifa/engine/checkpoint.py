"""Training checkpoints: atomic writes and resumption with RNG states.

A checkpoint holds only tensors and plain Python data, so `sifa.models.load_checkpoint` reads it
weights-only, without running pickled code. The RNG states of every rank are stored so that
training continued from a checkpoint draws the same random numbers as an uninterrupted run.
"""
from __future__ import annotations

import os
import random
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch

CURRENT = "current.pth"


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


def _atomic_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    _atomic_save(state, current)
    if epoch % save_freq == 0:
        kept = os.path.join(output_dir, epoch_checkpoint_name(epoch))
        shutil.copyfile(current, kept + ".tmp")
        os.replace(kept + ".tmp", kept)
    return current


def resume_path(resume: Any, output_dir: str) -> Optional[str]:
    """`resume: true` -> <output_dir>/current.pth; a string -> that path; false or '' -> None."""
    if resume is True:
        return os.path.join(output_dir, CURRENT)
    if isinstance(resume, str) and resume:
        return resume
    return None
