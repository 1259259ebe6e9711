"""Peak memory and time of one training step (forward + backward) with and without use_checkpoint
(activation checkpointing per stage), each in a fresh process (benchmarks/harness.py).

    python benchmarks/bench_checkpointing.py --repeat 2
"""
from __future__ import annotations

import argparse

from harness import measure

WORKLOADS = [  # net name, frames, frame size, batch
    ("c2d_sifa_resnet50", 16, 224, 1),
    ("c2d_sifa_swin_vit_s_p4_w7", 16, 224, 1),
]


def build(net_name: str, frames: int, size: int, batch: int, use_checkpoint: bool, device: str):
    import torch

    from sifa.models import get_model_by_name

    torch.manual_seed(0)
    model = get_model_by_name(net_name, num_classes=400, clip_length=frames,
                              sifa_kernel=[3] if "swin" in net_name else [1, 3, 3, 3]).to(device).train()
    model.use_checkpoint = use_checkpoint
    video = torch.randn(batch, 3, frames, size, size, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        sum(o.sum() for o in model(video)).backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| network | frames × size × batch | plain ms | checkpointed ms | time ratio | plain peak MiB | "
          "checkpointed peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for net_name, frames, size, batch in WORKLOADS:
        plain = measure(build, (net_name, frames, size, batch, False, args.device), args.device, args.repeat)
        ckpt = measure(build, (net_name, frames, size, batch, True, args.device), args.device, args.repeat)
        print(f"| {net_name} | {frames} × {size}² × {batch} | {plain.ms:.0f} | {ckpt.ms:.0f} | "
              f"{ckpt.ms / plain.ms:.2f} | {plain.peak_mib:.0f} | {ckpt.peak_mib:.0f} | "
              f"{ckpt.peak_mib / plain.peak_mib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
