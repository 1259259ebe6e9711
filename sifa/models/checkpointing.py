"""Activation checkpointing per stage (``net.set_grad_checkpointing()``; the config's ``use_checkpoint``):
a stage's activations are recomputed in the backward pass instead of kept, trading compute for memory
(long clips, e.g. SIFA-Swin-B at 64 frames). Gradients are those of the plain forward: the
recomputation replays the same random draws (dropout, drop path) and leaves BatchNorm's running
statistics as the forward updated them once.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _norm_statistics_kept(stage: nn.Module) -> Iterator[None]:
    """Restores the BatchNorm buffers that the recomputed forward updates a second time."""
    norms = [m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in m.buffers()] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved):
                for current, before in zip(module.buffers(), buffers):
                    current.copy_(before)


class GradCheckpointing:
    """The networks' switch, by timm's name: ``net.set_grad_checkpointing()`` makes their forward run each
    stage through :func:`run_stage` checkpointed."""

    use_checkpoint = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.use_checkpoint = enable


def run_stage(stage: nn.Module, x: Tensor, use_checkpoint: bool) -> Tensor:
    """``stage(x)``, checkpointed when ``use_checkpoint`` and a backward pass may follow."""
    if not (use_checkpoint and torch.is_grad_enabled()):
        return stage(x)
    return checkpoint(stage, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _norm_statistics_kept(stage)))
