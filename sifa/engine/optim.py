"""SGD and the per-iteration learning-rate schedule (docs/design.md §8).

Warm-up: linear from base_lr / warmup_multiplier to base_lr over warmup_epoch epochs.
Then cosine annealing to 1e-6 at the end of training, or step decay by lr_decay_rate at each
epoch of lr_decay_epochs (epochs counted from the start of training, as in the original).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Iterable, Tuple

import torch

COSINE_FINAL_LR = 1e-6


def build_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: SimpleNamespace) -> torch.optim.SGD:
    trainable = [p for p in parameters if p.requires_grad]
    return torch.optim.SGD(trainable, lr=cfg.base_learning_rate, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def effective_batch_and_lr(cfg: SimpleNamespace, world_size: int) -> Tuple[int, float]:
    """Clips per optimizer step (batch_size × processes × iter_size) and the learning rate for it:
    base_learning_rate, scaled by effective batch / reference_batch when auto_scale_lr."""
    effective_batch = cfg.batch_size * world_size * cfg.iter_size
    lr = cfg.base_learning_rate
    if cfg.auto_scale_lr:
        lr *= effective_batch / cfg.reference_batch
    return effective_batch, lr


def lr_factor(cfg: SimpleNamespace, iters_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of base_lr at iteration `it` (0-based, counted over the whole run)."""
    warmup = cfg.warmup_epoch * iters_per_epoch
    total = cfg.epochs * iters_per_epoch
    milestones = [epoch * iters_per_epoch for epoch in cfg.lr_decay_epochs]
    start = 1.0 / cfg.warmup_multiplier
    final = COSINE_FINAL_LR / cfg.base_learning_rate if cfg.base_learning_rate > 0 else 0.0

    def factor(it: int) -> float:
        if it < warmup:
            return start + (1.0 - start) * it / warmup
        if cfg.lr_scheduler == "step":
            return cfg.lr_decay_rate ** sum(it >= m for m in milestones)
        if total <= warmup:  # the whole run is warm-up: nothing left to anneal
            return 1.0
        progress = min(1.0, (it - warmup) / (total - warmup))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SimpleNamespace,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, iters_per_epoch))
