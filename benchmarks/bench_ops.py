"""Time and peak memory of the SIFA ops, compiled extension vs pure-PyTorch reference.

Shapes are SIFA-Net's SIFA layers for a 16-frame 224² clip (N=8, T=4); timing and peak memory as
benchmarks/harness.py measures them. Ops: `separate` = defcor then defagg (two ops, the scores
between them in memory), `fused` = sifa_attention (what the SIFA blocks call). The reference
computes both the same way (its sifa_attention is the composition). On a GPU the last column is
the extension's achieved memory bandwidth, counting the bytes a pass must move at least once:
features in and out, offsets, scores (and their gradients in backward), against the device's peak
(from its properties' memory clock and bus width, or, where this PyTorch lacks them, the bandwidth
a device-to-device copy reaches).
On the CPU it is the forward's achieved GFLOP/s (sifa/ops/flops.py counts the forward only), and
the header names the instruction set the CPU kernels run with (SIFA_CPU_CAPABILITY caps it).

    python benchmarks/bench_ops.py [--device cpu|cuda] [--shapes 128 256 512] [--ops separate fused]
        [--dtype float32|float16|bfloat16] [--channels-last] [--repeat 3]
"""
from __future__ import annotations

import argparse

from harness import copy_bandwidth_gbs, measure, peak_bandwidth_gbs

SHAPES = {128: 28, 256: 14, 512: 7}  # channels -> map size
N, T, K = 8, 4, 3


def build(device: str, mode: str, C: int, op: str, dtype: str, channels_last: bool):
    """One SIFA step at SIFA-Net's layer shape (and its backward for fwd+bwd)."""
    import torch
    import sifa.ops as ops

    S = SHAPES[C]
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, T, S, S, generator=g).to(device, dt)
    if channels_last:  # the kernels' working layout: no conversion copies in or out
        x = x.to(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    off = (torch.randn(N, 2 * K * K, T, S, S, generator=g) * 2).to(device, dt).requires_grad_()
    w = torch.full((C, T, K, K), 1.0 / C, device=device, dtype=dt)  # frozen, as in the networks

    def forward():
        if op == "fused":
            return ops.sifa_attention(x, off, w, 1, 1, 1, 1)
        return ops.defagg(x, off, ops.defcor(x, off, w, 1, 1, 1, 1), K, 1, 1, 1, 1)

    def step():
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = forward()
            if mode == "fwd+bwd":
                out.backward(torch.ones_like(out))
                x.grad = off.grad = None

    return step


def min_bytes(C: int, mode: str, element: int) -> int:
    """Bytes a pass moves at least once: x, output, offsets, scores; backward adds their gradients."""
    S = SHAPES[C]
    features, offsets, scores = N * C * T * S * S, N * 2 * K * K * T * S * S, N * K * K * T * S * S
    forward = 2 * features + offsets + scores
    return element * (forward if mode == "fwd" else forward + 3 * features + 2 * offsets)


def forward_flops(C: int) -> int:
    """FLOPs of the forward (both ops, or the fused op that counts as both) by sifa/ops/flops.py."""
    from sifa.ops.flops import sifa_op_flops

    S = SHAPES[C]
    return 2 * sifa_op_flops((N, C, T, S, S), (K, K))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", type=int, nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ops", nargs="+", default=["separate", "fused"], choices=["separate", "fused"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true",
                        help="features in torch.channels_last_3d memory format (as the Swin blocks pass them)")
    parser.add_argument("--repeat", type=int, help="timed steps (default 3 on the CPU, 50 on a GPU)")
    args = parser.parse_args()
    import torch

    if args.device == "cpu" and args.dtype != "float32":
        parser.error("the CPU kernels compute in float32 (autocast casts to it); use --dtype float32")
    gpu = args.device == "cuda"
    repeat = args.repeat or (50 if gpu else 3)
    header = f"torch {torch.__version__}, device {args.device}"
    if gpu:  # the properties' peak where this PyTorch reports it, else the bandwidth a copy reaches
        peak = peak_bandwidth_gbs()
        peak, peak_name = (peak, "peak") if peak else (copy_bandwidth_gbs("cuda"), "measured copy")
        header += f" ({torch.cuda.get_device_name(0)}, {peak_name} {peak:.0f} GB/s)"
    else:
        import sifa.ops as ops
        header += f" (SIFA CPU kernels: {ops.cpu_capability() if ops.backend() == 'extension' else 'not built'})"
    layout = "channels_last_3d" if args.channels_last else "contiguous"
    print(f"{header}, threads {torch.get_num_threads()}, N={N} T={T} K={K} {args.dtype}, {layout} features")
    columns = ["shape", "op", "pass", "reference ms", "extension ms", "speed-up", "reference peak MiB",
               "extension peak MiB", "memory ratio"] + (["SIFA kernels ms", "kernels GB/s (of peak)"] if gpu
                                                                    else ["forward GFLOP/s"])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    element = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    for C in args.shapes:
        for op in args.ops:
            for mode in ("fwd", "fwd+bwd"):
                workload = (args.device, mode, C, op, args.dtype, args.channels_last)
                ref = measure(build, workload, args.device, repeat, {"SIFA_OPS_BACKEND": "reference"})
                ext = measure(build, workload, args.device, repeat, {"SIFA_OPS_BACKEND": "extension"})
                row = [f"C={C} {SHAPES[C]}²", op, mode, f"{ref.ms:.2f}", f"{ext.ms:.2f}", f"{ref.ms / ext.ms:.1f}×",
                       f"{ref.peak_mib:.0f}", f"{ext.peak_mib:.0f}", f"{ext.peak_mib / max(ref.peak_mib, 1e-9):.2f}"]
                if gpu:
                    gbs = min_bytes(C, mode, element) / (ext.kernel_ms * 1e-3) / 1e9
                    row += [f"{ext.kernel_ms:.3f}", f"{gbs:.0f} ({100 * gbs / peak:.0f} %)"]
                else:
                    row.append(f"{forward_flops(C) / (ext.ms * 1e-3) / 1e9:.1f}" if mode == "fwd" else "")
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
