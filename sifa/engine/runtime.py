"""Per-process set-up of a run: its logger, its seeds and its mixed-precision dtype."""
from __future__ import annotations

import logging
import os
import random
import sys
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from .distributed import DistContext

LOG_FILE = "log.txt"


def setup_logger(output_dir: str, ctx: DistContext) -> logging.Logger:
    """The ``sifa`` logger: rank 0 logs to the console and <output_dir>/log.txt; other ranks only print warnings."""
    logger = logging.getLogger("sifa")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    formatter = logging.Formatter(f"[%(asctime)s rank{ctx.rank}] %(message)s", "%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if ctx.is_main:
        file_handler = logging.FileHandler(os.path.join(output_dir, LOG_FILE))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(cfg: SimpleNamespace, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype, or None: mixed precision is used on GPU only."""
    if device.type != "cuda" or cfg.amp == "none":
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16
