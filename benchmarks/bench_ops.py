"""Time and peak memory of the SIFA ops, compiled extension vs pure-PyTorch reference.

Shapes are SIFA-Net's SIFA layers for a 16-frame 224² clip (N=8, T=4); timing and peak memory as
benchmarks/harness.py measures them.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--shapes 128 256 512] [--repeat 3]
"""
from __future__ import annotations

import argparse

from harness import measure

SHAPES = {128: 28, 256: 14, 512: 7}  # channels -> map size


def build(device: str, mode: str, C: int):
    """One SIFA step (defcor then defagg, and backward for fwd+bwd) at SIFA-Net's layer shape."""
    import torch
    import sifa.ops as ops

    S = SHAPES[C]
    N, T, K = 8, 4, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, T, S, S, generator=g).to(device).requires_grad_()
    off = (torch.randn(N, 2 * K * K, T, S, S, generator=g) * 2).to(device).requires_grad_()
    w = torch.full((C, T, K, K), 1.0 / C, device=device)

    def step():
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = ops.defagg(x, off, ops.defcor(x, off, w, 1, 1, 1, 1), K, 1, 1, 1, 1)
            if mode == "fwd+bwd":
                out.backward(torch.ones_like(out))
                x.grad = off.grad = None

    return step


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
            ref_ms, ref_mem = measure(build, (args.device, mode, C), args.device, args.repeat,
                                      {"SIFA_OPS_BACKEND": "reference"})
            ext_ms, ext_mem = measure(build, (args.device, mode, C), args.device, args.repeat,
                                      {"SIFA_OPS_BACKEND": "extension"})
            S = SHAPES[C]
            print(f"| C={C} {S}² | {mode} | {ref_ms:.1f} | {ext_ms:.1f} | {ref_ms / ext_ms:.1f}× | "
                  f"{ref_mem:.0f} | {ext_mem:.0f} | {ext_mem / max(ref_mem, 1e-9):.2f} |")


if __name__ == "__main__":
    main()
