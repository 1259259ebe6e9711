"""Export a trained network for deployment: ONNX (runs in onnxruntime, standard operators only) or a
torch.export program (.pt2).

    python -m sifa.tools.export --config_file settings/X.yml --checkpoint ckpt.pth --format onnx
    python -m sifa.tools.export --config_file settings/X.yml --checkpoint ckpt.pth --format pt2 --heads both

The input is one batch of test views, N x 3 x (eva_num_segments * clip_length) x eva_crop_size x
eva_crop_size, normalized as the evaluation transform does; the batch size stays free. The outputs
are the logits of the main head, or of both heads of a SIFA-Net with ``--heads both`` (evaluation
averages their softmaxes). After writing the file the tool runs it on a random batch and prints the
largest difference from the PyTorch network.

ONNX: the SIFA ops (``sifa::sifa_attention``, ``sifa::defcor``, ``sifa::defagg``) are translated into
standard ONNX operators (`sifa.ops.onnx`: GridSample for the bilinear sampling of the deformed taps,
then the reference's products and sums), so no custom-operator library is needed. Needs the export extras
(``pip install -r requirements-extra.txt``: onnx, onnxscript, and onnxruntime for the check).
A .pt2 keeps the SIFA ops as calls into the compiled extension: load it in a process that has
imported ``sifa.ops`` (``torch.export.load(path).module()``).
"""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config import load_config
from ..errors import InputError, exit_on_user_error
from ..models.build import load_network
from ..ops import backend as ops_backend
from ..ops.onnx import OPSET, onnx_translation_table
from ..user_files import check_output_file

FORMATS = ("onnx", "pt2")


class InferenceNetwork(nn.Module):
    """A network's main head, or all its heads, as plain outputs (the networks return a list of heads)."""

    def __init__(self, network: nn.Module, both_heads: bool):
        super().__init__()
        self.network = network
        self.both_heads = both_heads

    def forward(self, video: torch.Tensor) -> torch.Tensor | Tuple[torch.Tensor, ...]:
        heads = self.network(video)
        return tuple(heads) if self.both_heads else heads[0]


def export(network: nn.Module, example: torch.Tensor, path: str, export_format: str,
           both_heads: bool = False) -> None:
    """Write ``network`` (in eval mode) for inputs shaped like ``example`` (any batch size) to ``path``.

    ``example`` needs a batch of 2 or more: torch.export fixes a dimension traced at size 1."""
    if export_format not in FORMATS:
        raise InputError(f"unknown export format '{export_format}', expected one of {list(FORMATS)}")
    if example.shape[0] < 2:
        raise InputError(f"the example batch must hold 2 or more views, got {example.shape[0]}")
    model = InferenceNetwork(network.eval(), both_heads).eval()
    with torch.no_grad():
        heads = len(network(example))
    if both_heads and heads < 2:
        raise InputError(f"--heads both: the network has {heads} head")
    batch = {0: torch.export.Dim("batch", min=1)}
    if export_format == "pt2":
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(batch,)), path)
        return
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise InputError("ONNX export needs onnx and onnxscript: pip install -r requirements-extra.txt") from None
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, dynamic_shapes=(batch,),
                                input_names=["video"], output_names=["logits", "logits_dual"][:2 if both_heads else 1],
                                custom_translation_table=onnx_translation_table(), verbose=False)
    program.save(path)


def run_exported(path: str, video: torch.Tensor) -> List[np.ndarray]:
    """Outputs of an exported file on ``video``: onnxruntime for .onnx, the reloaded program for .pt2."""
    if path.endswith(".onnx"):
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: video.numpy()})
    ops_backend()  # loads the compiled SIFA ops, which the program calls
    with torch.no_grad():
        outputs = torch.export.load(path).module()(video)
    return [o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]


def example_input(cfg: SimpleNamespace, batch_size: int) -> torch.Tensor:
    """A batch of test views as the evaluation transform makes them (normalized, so roughly unit scale)."""
    frames = cfg.eva_num_segments * cfg.clip_length
    return torch.randn(batch_size, 3, frames, cfg.eva_crop_size, cfg.eva_crop_size)


def main(argv: Optional[List[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True, help="experiment YAML the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or bare state dict")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", default=None, help="output file (default: the checkpoint's name with .onnx/.pt2)")
    parser.add_argument("--heads", choices=["main", "both"], default="main",
                        help="export the main head's logits, or both heads' (SIFA-Net)")
    parser.add_argument("--batch_size", type=int, default=2,
                        help="views in the traced and checked batch, 2 or more (the exported batch size is free)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    args = parser.parse_args(argv)
    out = args.out or os.path.splitext(args.checkpoint)[0] + "." + args.format
    with exit_on_user_error():
        check_output_file(out, "--out")
        cfg = load_config(args.config_file, args.opts)
        network = load_network(cfg, args.checkpoint, torch.device("cpu"))
        example = example_input(cfg, args.batch_size)
        export(network, example, out, args.format, args.heads == "both")
    with torch.no_grad():
        expected = network(example)[:2 if args.heads == "both" else 1]
    difference = max(float(np.abs(got - want.numpy()).max())
                     for got, want in zip(run_exported(out, example), expected))
    heads = "both heads" if args.heads == "both" else "main head"
    print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB): {cfg.net_name}, input N×3×"
          f"{example.shape[2]}×{example.shape[3]}×{example.shape[4]}, {heads}")
    print(f"check on a batch of {args.batch_size}: largest difference from PyTorch {difference:.2e}")
    return difference


if __name__ == "__main__":
    main()
