"""Timing and peak memory of one workload, each in a fresh process so that its peak is its own.

CPU peak: growth of the peak RSS (reset through /proc/self/clear_refs, Linux) over the RSS before
the timed runs; GPU peak: max_memory_allocated over the allocation before them.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> float:
    """Resets the kernel's peak-RSS mark and returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _run(build: Callable, args: tuple, device: str, repeat: int, env: dict, queue) -> None:
    os.environ.update(env)
    import torch

    step = build(*args)

    def synced_step():
        step()
        if device == "cuda":
            torch.cuda.synchronize()

    synced_step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        synced_step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else _status_mib("VmHWM") - base
    queue.put((statistics.median(times) * 1e3, peak))


def measure(build: Callable, args: tuple, device: str, repeat: int, env: dict | None = None) -> Tuple[float, float]:
    """Median milliseconds and peak MiB of ``build(*args)()`` (a module-level ``build`` returning a step)."""
    # a fixed mmap threshold makes glibc hand freed tensors back to the OS, so RSS tracks live memory
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **(env or {})}
    os.environ.update(env)  # the allocator reads it when the child process starts
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(build, args, device, repeat, env, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
