"""Layout copies inside the SIFA op calls of SIFA-Net R50, contiguous against channels_last_3d: the 5-D
``aten::copy_`` events under a ``sifa::`` op event in one forward + backward
(``sifa.ops.profiling.layout_copies``), counted and summed in MB (fp32).

    python benchmarks/layout_copies.py [--batch 2] [--frames 8] [--crop 112] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sifa.models import get_model_by_name  # noqa: E402
from sifa.ops.profiling import layout_copies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=400, clip_length=args.frames)
    x = torch.randn(args.batch, 3, args.frames, args.crop, args.crop)
    print("| input | layout | forward copies | forward MB | backward copies | backward MB |")
    print("|---|---|---|---|---|---|")
    for channels_last in (False, True):
        net = copy.deepcopy(model)
        net.set_channels_last(channels_last)

        def step():
            sum(head.sum() for head in net(x)).backward()

        found = layout_copies(step)
        forward = [shape for op, shape in found if op == "sifa::sifa_attention"]
        backward = [shape for op, shape in found if op != "sifa::sifa_attention"]
        mb = [sum(math.prod(s) for s in shapes) * 4 / 1e6 for shapes in (forward, backward)]
        print(f"| {args.batch}×{args.frames}×{args.crop}² | {'channels_last' if channels_last else 'contiguous'} | "
              f"{len(forward)} | {mb[0]:.1f} | {len(backward)} | {mb[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
