"""Parameters and GFLOPs per view of a network.

    python -m sifa.tools.complexity --net_name c2d_sifa_resnet50 --clip_length 16
    python -m sifa.tools.complexity --net_name timm/resnet18 --sifa_stages 2 3 --clip_length 8
    python -m sifa.tools.complexity --config_file settings/c2d_sifa_res50-1x16x1.k400.yml [--opts key=value ...]

With --config_file, the network and its test view come from the experiment (net_name, eva_num_segments
x clip_length frames at eva_crop_size, num_classes, sifa_kernel, and the network's options and
sifa_stages), as the other tools take them;
flags given as well override it.

One view is one clip of ``clip_length`` frames at ``crop_size``², batch 1, inference. FLOPs are
counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of convolutions and
matmuls; norms, activations and pooling are not counted) plus the SIFA ops' formula of
``sifa.ops.flops`` (10·N·C·T·H·W·K² each), so the compiled extension is required.
"""
from __future__ import annotations

import argparse
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import load_config
from ..errors import exit_on_user_error
from ..models import check_model_config, get_model_by_name
from ..models.registry import model_arguments
from ..ops.flops import register_flop_formulas


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one inference forward of ``model`` on ``inputs`` (SIFA ops included)."""
    register_flop_formulas()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return counter.get_total_flops()


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """(all parameters, trainable parameters); the frozen SIFA correlation weights count in the first."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def complexity(net_name: str, clip_length: int, crop_size: int = 224, num_classes: int = 400,
               sifa_kernel: Optional[Sequence[int]] = None, **model_args: Any) -> Tuple[int, int, int]:
    """(parameters, trainable parameters, FLOPs per view) of ``net_name`` (built with ``model_args`` too,
    e.g. ``sifa_stages`` of a ``timm/<name>`` network)."""
    model = get_model_by_name(net_name, num_classes=num_classes, clip_length=clip_length,
                              sifa_kernel=sifa_kernel, **model_args).eval()
    flops = count_flops(model, torch.randn(1, 3, clip_length, crop_size, crop_size))
    return (*count_parameters(model), flops)


def _stage(value: str) -> Union[int, str]:
    """A stage on the command line: an index if it is a number, else a module name."""
    return int(value) if value.isdigit() else value


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", help="experiment YAML: the network and test view it evaluates")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--net_name")
    parser.add_argument("--clip_length", type=int, help="frames per view (default 16)")
    parser.add_argument("--crop_size", type=int, help="default 224")
    parser.add_argument("--num_classes", type=int, help="default 400")
    parser.add_argument("--sifa_kernel", type=int, nargs="+", default=None)
    parser.add_argument("--sifa_stages", type=_stage, nargs="*", default=None,
                        help="timm/<name> networks: the stages SIFA layers follow (indices or names)")
    args = parser.parse_args(argv)
    model_args = {}
    if args.config_file:
        with exit_on_user_error():
            cfg = load_config(args.config_file, args.opts)
            check_model_config(cfg)
        view = {"net_name": cfg.net_name, "clip_length": cfg.eva_num_segments * cfg.clip_length,
                "crop_size": cfg.eva_crop_size, "num_classes": cfg.num_classes, "sifa_kernel": cfg.sifa_kernel}
        model_args = model_arguments(cfg)
    elif args.net_name:
        view = {"clip_length": 16, "crop_size": 224, "num_classes": 400, "sifa_kernel": None}
    else:
        parser.error("give --net_name or --config_file")
    for key, value in vars(args).items():
        if key in ("net_name", "clip_length", "crop_size", "num_classes", "sifa_kernel") and value is not None:
            view[key] = value
    if args.sifa_stages is not None:
        model_args["sifa_stages"] = args.sifa_stages
    args = argparse.Namespace(**view)
    with exit_on_user_error():
        register_flop_formulas()
    params, trainable, flops = complexity(args.net_name, args.clip_length, args.crop_size, args.num_classes,
                                          args.sifa_kernel, **model_args)
    print(f"{args.net_name}: input 1×3×{args.clip_length}×{args.crop_size}×{args.crop_size} (one view)")
    print(f"parameters: {params / 1e6:.2f} M ({params}; trainable {trainable})")
    print(f"GFLOPs per view: {flops / 1e9:.2f}")


if __name__ == "__main__":
    main()
