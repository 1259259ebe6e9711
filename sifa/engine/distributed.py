"""Process-group setup for `torch.distributed.launch`, `torchrun` (also multi-node) and plain runs.

The launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`torch.distributed.launch` also passes `--local-rank=N` (older versions `--local_rank=N`).
Without RANK/WORLD_SIZE the run is a single process and no process group is created.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(local_rank: Optional[int] = None) -> DistContext:
    """`local_rank` from the command line wins over the LOCAL_RANK environment variable."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_ddp(ctx: DistContext, model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around `model`, ignoring the parameters its modules declare unused (``unused_parameters``:
    kept for the state dict, never in the forward), so that no step waits for their gradients."""
    unused = {id(p) for m in model.modules() if hasattr(m, "unused_parameters") for p in m.unused_parameters()}
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, p in model.named_parameters() if id(p) in unused])
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_gather_objects(ctx: DistContext, obj: Any) -> List[Any]:
    """The object of every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(ctx: DistContext, value: float) -> float:
    if not ctx.distributed:
        return value
    return sum(all_gather_objects(ctx, value)) / ctx.world_size


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics).

    DDP copies them only at the start of a forward, so after training each rank holds its own last
    update; sharded evaluation must use one model, the one rank 0 saves.
    """
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
