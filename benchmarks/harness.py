"""Timing and peak memory of one workload, each in a fresh process so that its peak is its own.

CPU peak: growth of the peak RSS (reset through /proc/self/clear_refs, Linux) over the RSS before
the timed runs; GPU peak: max_memory_allocated over the allocation before them. On a GPU the steps
are timed with CUDA events around `repeat` back-to-back steps (a single eager call timed on the host
would mostly measure Python and the dispatcher), and the time spent in the SIFA kernels themselves
is read from the profiler, so that a row shows both the op's end-to-end time and its kernels' time.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

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

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            step()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / repeat
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        queue.put(Measurement(ms, peak, _sifa_kernel_ms(step, torch)))
        return
    base = _reset_peak_rss()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put(Measurement(statistics.median(times) * 1e3, _status_mib("VmHWM") - base, None))


def _sifa_kernel_ms(step: Callable, torch, steps: int = 5) -> float:
    """Milliseconds per step spent in the SIFA CUDA kernels (the profiler's device time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages() if "sifa::ops" in e.key)
    return total_us / 1e3 / steps


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 30, repeat: int = 10) -> float:
    """The memory bandwidth a plain copy reaches here: bytes read and written by ``dst.copy_(src)`` of an
    ``nbytes`` buffer per second, median of ``repeat`` (CUDA events on a GPU, the host clock on the CPU)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    seconds = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(seconds) / 1e9


def peak_bandwidth_gbs() -> Optional[float]:
    """GPU 0's peak DRAM bandwidth from its properties (double data rate × bus width); None where this
    PyTorch's device properties lack the memory clock or bus width."""
    import torch

    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


class Measurement(NamedTuple):
    ms: float  # per step: median on the CPU, mean over back-to-back steps between CUDA events on a GPU
    peak_mib: float
    kernel_ms: Optional[float]  # GPU only: the SIFA kernels' share of `ms`


def measure(build: Callable, args: tuple, device: str, repeat: int, env: dict | None = None) -> Measurement:
    """Time and peak memory of ``build(*args)()`` (a module-level ``build`` returning a step)."""
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
