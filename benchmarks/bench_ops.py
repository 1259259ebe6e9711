"""Time and peak memory of the SIFA ops, compiled extension vs pure-PyTorch reference.

Shapes are SIFA-Net's SIFA layers for a 16-frame 224² clip (N=8, T=4). Each measurement runs in a
fresh process so that peak memory (CPU: growth of the peak RSS over the RSS before the timed
runs; GPU: max_memory_allocated over the allocation before them) is its own.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--shapes 128 256 512] [--repeat 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

SHAPES = {128: 28, 256: 14, 512: 7}  # channels -> map size


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> float:
    """Resets the kernel's peak-RSS mark (Linux) and returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _measure(backend: str, device: str, mode: str, C: int, repeat: int, queue) -> None:
    os.environ["SIFA_OPS_BACKEND"] = backend
    import torch
    import sifa.ops as ops

    S = SHAPES[C]
    N, T, K = 8, 4, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, T, S, S, generator=g).to(device).requires_grad_()
    off = (torch.randn(N, 2 * K * K, T, S, S, generator=g) * 2).to(device).requires_grad_()
    w = torch.full((C, T, K, K), 1.0 / C, device=device)

    def step():
        corr = ops.defcor(x, off, w, 1, 1, 1, 1)
        out = ops.defagg(x, off, corr, K, 1, 1, 1, 1)
        if mode == "fwd+bwd":
            out.backward(torch.ones_like(out))
            x.grad = off.grad = None

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    ctx = torch.enable_grad() if mode == "fwd+bwd" else torch.no_grad()
    with ctx:
        step()  # warm-up
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _reset_peak_rss()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else _status_mib("VmHWM") - base
    queue.put((statistics.median(times) * 1e3, peak))


def measure(backend: str, device: str, mode: str, C: int, repeat: int):
    # a fixed mmap threshold makes glibc hand freed tensors back to the OS, so RSS tracks live memory
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(backend, device, mode, C, repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", type=int, nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"N=8 T=4 K=3 float32")
    print("| shape | pass | reference ms | extension ms | speed-up | reference peak MiB | extension peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for C in args.shapes:
        for mode in ("fwd", "fwd+bwd"):
            ref_ms, ref_mem = measure("reference", args.device, mode, C, args.repeat)
            ext_ms, ext_mem = measure("extension", args.device, mode, C, args.repeat)
            S = SHAPES[C]
            print(f"| C={C} {S}² | {mode} | {ref_ms:.1f} | {ext_ms:.1f} | {ref_ms / ext_ms:.1f}× | "
                  f"{ref_mem:.0f} | {ext_mem:.0f} | {ext_mem / max(ref_mem, 1e-9):.2f} |")


if __name__ == "__main__":
    main()
