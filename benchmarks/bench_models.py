"""Training-step and inference time and peak memory of SIFA networks against their C2D baselines.

SIFA-Net R50 vs C2D R50 and SIFA-Swin-B vs C2D-Swin-B at the shipped input sizes on GPU (batch 8 ×
16×224² for the ResNets, batch 2 × 32×224² for Swin-B); reduced on CPU (batch 1, 8×112² ResNets,
batch 1 × 4×224² Swin-B); timing and peak memory as benchmarks/harness.py measures them.

    python benchmarks/bench_models.py [--device cpu|cuda] [--repeat 3] [--amp]
    python benchmarks/bench_models.py --layouts [--batch 2] [--frames 8] [--crop 112]

``--layouts`` times SIFA-Net R50 (and C2D R50) contiguous against channels_last_3d (the config's
``channels_last``) instead, at the given input size (default: the device's).
"""
from __future__ import annotations

import argparse

from harness import measure

PAIRS = [("c2d_sifa_resnet50", "c2d_resnet50"), ("c2d_sifa_swin_vit_b_p4_w7", "c2d_swin_vit_b_p4_w7")]
SIZES = {  # device -> family -> (batch, frames, crop)
    "cuda": {"resnet": (8, 16, 224), "swin": (2, 32, 224)},
    "cpu": {"resnet": (1, 8, 112), "swin": (1, 4, 224)},
}


def build(net_name: str, device: str, mode: str, amp: bool, size: tuple | None = None, channels_last: bool = False):
    """One training step (SGD) or inference forward of ``net_name`` at ``size`` (batch, frames, crop),
    by default the device's input size; in channels_last_3d with ``channels_last``."""
    import torch
    from sifa.models import get_model_by_name, model_entry

    batch, frames, crop = size or SIZES[device][model_entry(net_name).family]
    model = get_model_by_name(net_name, num_classes=400, clip_length=frames).to(device)
    if channels_last:
        model.set_channels_last()
    x = torch.randn(batch, 3, frames, crop, crop, device=device)
    labels = torch.randint(0, 400, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=amp)
    model.train(mode == "train")

    def step():
        if mode == "train":
            with autocast:
                loss = sum(torch.nn.functional.cross_entropy(head.float(), labels) for head in model(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), autocast:
                model(x)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--only", choices=["resnet", "swin"], help="measure one pair")
    parser.add_argument("--layouts", action="store_true", help="contiguous against channels_last_3d (ResNets)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--crop", type=int)
    args = parser.parse_args()
    import torch
    import sifa.ops
    from sifa.models import model_entry
    print(f"torch {torch.__version__}, device {args.device}, ops backend {sifa.ops.backend()}, "
          f"threads {torch.get_num_threads()}, amp {args.amp}")
    if args.layouts:
        default = SIZES[args.device]["resnet"]
        size = tuple(v or d for v, d in zip((args.batch, args.frames, args.crop), default))
        print("| network | input | pass | contiguous ms | channels_last ms | ratio | contiguous peak MiB | "
              "channels_last peak MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for net in PAIRS[0]:
            for mode in ("train", "inference"):
                runs = [measure(build, (net, args.device, mode, args.amp, size, cl), args.device, args.repeat)
                        for cl in (False, True)]
                (ms, mem, _), (cl_ms, cl_mem, _) = runs
                print(f"| {net} | {size[0]}×{size[1]}×{size[2]}² | {mode} | {ms:.0f} | {cl_ms:.0f} | "
                      f"{cl_ms / ms:.2f}× | {mem:.0f} | {cl_mem:.0f} |", flush=True)
        return
    print("| network | input | pass | ms | baseline ms | time ratio | peak MiB | baseline peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for sifa_net, base_net in PAIRS:
        family = model_entry(sifa_net).family
        if args.only and args.only != family:
            continue
        batch, frames, crop = SIZES[args.device][family]
        for mode in ("train", "inference"):
            ms, mem, _ = measure(build, (sifa_net, args.device, mode, args.amp), args.device, args.repeat)
            base_ms, base_mem, _ = measure(build, (base_net, args.device, mode, args.amp), args.device, args.repeat)
            print(f"| {sifa_net} | {batch}×{frames}×{crop}² | {mode} | {ms:.0f} | {base_ms:.0f} | "
                  f"{ms / base_ms:.2f}× | {mem:.0f} | {base_mem:.0f} |")


if __name__ == "__main__":
    main()
