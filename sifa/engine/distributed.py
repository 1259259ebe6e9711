"""Process-group setup for `torch.distributed.launch`, `torchrun` (also multi-node) and plain runs.

The launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`torch.distributed.launch` also passes `--local-rank=N` (older versions `--local_rank=N`).
Without RANK/WORLD_SIZE the run is a single process and no process group is created.
Under torchrun the store of the rendezvous is the launcher's own, so it outlives the workers: the
processes tell each other there why they stop (`stops_reported_once`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch
import torch.distributed as dist

from ..errors import INTERRUPTED_STATUS, USAGE_ERROR_STATUS, UserError, print_user_error

BUG_STATUS = 1  # Python's exit status after a traceback


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    store: Optional[dist.Store] = None  # the rendezvous' key-value store, in a distributed run

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
    store = None
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # init_method="env://" does this rendezvous itself, but would not hand on the store.
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size))
        # The launcher's store keeps the keys of a group torchrun restarted (--max-restarts): the
        # group's own prefix keeps a restarted rank from reading the killed process's address there.
        group_keys = dist.PrefixStore(f"default_pg/restart{elastic_restart_count()}", store)
        dist.init_process_group(backend=backend, store=group_keys, rank=rank,
                                world_size=world_size, device_id=device if device.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, store=store)


def elastic_restart_count() -> int:
    """How often torchrun (``--max-restarts``) has restarted the workers of this run: 0 on the first start."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


@contextlib.contextmanager
def stops_reported_once(ctx: DistContext, interrupted: Callable[[], str]) -> Iterator[None]:
    """Runs a process's part of a run so that the terminal gets one line for why it stopped.

    A user error is printed by the first rank that meets it (every rank meets the same damaged
    checkpoint; a bad video, only the rank whose share holds it), and ends the process with status
    2. Ctrl-C (SIGINT, which torchrun passes on to every worker) ends each process with one line,
    ``interrupted()``: where the run can be resumed. The first process to stop records its exit
    status in the store; a process whose collective then fails ("Connection closed by peer", the
    only thing gloo can say) exits with that status and says nothing of its own, as a consequence.
    Any other error keeps its traceback.
    """
    # A restarted group (torchrun --max-restarts) shares the launcher's store with the group before it.
    stops = dist.PrefixStore(f"sifa_stops/restart{elastic_restart_count()}", ctx.store) if ctx.store else None
    try:
        yield
    except (KeyboardInterrupt, Exception) as stop:
        # From here on the process only reports and exits: a second Ctrl-C (the launcher passes on to each
        # worker what the terminal sent it already) must not cut the report short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = (INTERRUPTED_STATUS if isinstance(stop, KeyboardInterrupt)
                  else USAGE_ERROR_STATUS if isinstance(stop, UserError) else BUG_STATUS)
        earlier = _earlier_stop(ctx, stops, status)
        if status == USAGE_ERROR_STATUS:
            digest = hashlib.sha256(str(stop).encode()).hexdigest()
            if _first_value(stops, f"error/{digest}", str(ctx.rank)) in (None, str(ctx.rank)):
                print_user_error(stop)
        elif status == BUG_STATUS:
            if earlier is None:
                raise
            status = earlier  # this failure is the earlier stop's consequence
        if status == INTERRUPTED_STATUS:
            _print_interrupted(ctx, interrupted)
        sys.exit(status)


def _earlier_stop(ctx: DistContext, stops: Optional[dist.Store], status: int) -> Optional[int]:
    """Records this process's stop with its exit ``status`` unless another process stopped before it;
    returns that process's status, or None when this one is the first."""
    mine = f"{status} rank{ctx.rank}"
    first = _first_value(stops, "first", mine)
    return None if first in (None, mine) else int(first.split()[0])


def _first_value(stops: Optional[dist.Store], key: str, value: str) -> Optional[str]:
    """Sets ``key`` to ``value`` unless a process set it before; returns the value it holds, or None
    without a store."""
    if stops is None:
        return None
    try:
        return stops.compare_set(key, "", value).decode()
    except dist.DistError:  # the store is gone (outside torchrun it is rank 0's): nothing is known
        return None


def _print_interrupted(ctx: DistContext, interrupted: Callable[[], str]) -> None:
    rank = f" (rank {ctx.rank})" if ctx.distributed else ""
    print(f"interrupted{rank}: {interrupted()}", file=sys.stderr, flush=True)


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
