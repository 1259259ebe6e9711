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
standard ONNX operators — GridSample for the bilinear sampling of the deformed taps, then the
reference's products and sums — so no custom-operator library is needed. Needs the export extras
(``pip install -r requirements-extra.txt``: onnx, onnxscript, and onnxruntime for the check).
A .pt2 keeps the SIFA ops as calls into the compiled extension: load it in a process that has
imported ``sifa.ops`` (``torch.export.load(path).module()``).
"""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, load_config
from ..models.build import load_network
from ..models.weights import CheckpointMismatchError
from ..ops import backend as ops_backend

FORMATS = ("onnx", "pt2")
OPSET = 18  # GridSample's bilinear zero-padded sampling as onnxruntime runs it since opset 16


class InferenceNetwork(nn.Module):
    """A network's main head, or all its heads, as plain outputs (the networks return a list of heads)."""

    def __init__(self, network: nn.Module, both_heads: bool):
        super().__init__()
        self.network = network
        self.both_heads = both_heads

    def forward(self, video: torch.Tensor) -> torch.Tensor | Tuple[torch.Tensor, ...]:
        heads = self.network(video)
        return tuple(heads) if self.both_heads else heads[0]


def onnx_translation_table() -> dict:
    """ONNX translations of the SIFA ops for ``torch.onnx.export(..., custom_translation_table=...)``.

    The math is the reference's (sifa/ops/reference.py): for input N×C×T×H×W, tap k = (i, j) of frame t
    samples frame t at (h − pad_h + i·dil_h + Δy, w − pad_w + j·dil_w + Δx), bilinearly, zero outside;
    the scores sum, per channel group, weight[c,t,k] × previous frame × tap; the aggregation sums the
    scores × taps over k. Channel, time and spatial sizes must be static (the batch may vary).
    """
    import onnx.numpy_helper
    from onnxscript import opset18 as op

    def constant(array: np.ndarray):
        return op.Constant(value=onnx.numpy_helper.from_array(array.astype(np.float32)))

    def shape(*dims: int):
        return op.Constant(value_ints=list(dims))

    def sample_taps(input, offset, kernel: Sequence[int], padding: Sequence[int], dilation: Sequence[int]):
        """The deformed taps of every frame: N×T×C×K×H×W."""
        _, C, T, H, W = input.shape
        kh, kw = kernel
        K = kh * kw
        frames = op.Reshape(op.Transpose(input, perm=[0, 2, 1, 3, 4]), shape(-1, C, H, W))  # (N·T)×C×H×W
        taps_y = np.array([i * dilation[0] - padding[0] for i in range(kh) for _ in range(kw)])
        taps_x = np.array([j * dilation[1] - padding[1] for _ in range(kh) for j in range(kw)])
        base_y = (taps_y[:, None] + np.arange(H)[None, :]).reshape(1, 1, K, H, 1)
        base_x = (taps_x[:, None] + np.arange(W)[None, :]).reshape(1, 1, K, 1, W)
        deltas = op.Transpose(op.Reshape(offset, shape(-1, K, 2, T, H, W)), perm=[0, 3, 1, 4, 5, 2])  # N×T×K×H×W×2
        py = op.Add(op.Squeeze(op.Slice(deltas, [0], [1], [5]), [5]), constant(base_y))
        px = op.Add(op.Squeeze(op.Slice(deltas, [1], [2], [5]), [5]), constant(base_x))
        # pixel -> GridSample's [-1, 1] coordinates without align_corners (defined for 1-pixel maps too)
        gy = op.Sub(op.Div(op.Add(op.Mul(py, 2.0), 1.0), float(H)), 1.0)
        gx = op.Sub(op.Div(op.Add(op.Mul(px, 2.0), 1.0), float(W)), 1.0)
        grid = op.Reshape(op.Concat(op.Unsqueeze(gx, [5]), op.Unsqueeze(gy, [5]), axis=5), shape(-1, K * H, W, 2))
        taps = op.GridSample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=0)
        return op.Reshape(taps, shape(-1, T, C, K, H, W))

    def correlate(input, taps, weight, groups: int):
        """N×T×G×1×K×H×W: Σ over each group's channels of weight × previous frame × tap."""
        _, C, T, H, W = input.shape
        K = weight.shape[2] * weight.shape[3]
        previous = op.Concat(op.Slice(input, [0], [1], [2]), op.Slice(input, [0], [T - 1], [2]), axis=2)
        query = op.Unsqueeze(op.Transpose(previous, perm=[0, 2, 1, 3, 4]), [3])  # N×T×C×1×H×W
        channel_weight = op.Reshape(op.Transpose(op.Reshape(weight, shape(C, T, K)), perm=[1, 0, 2]),
                                    shape(1, T, C, K, 1, 1))
        products = op.Mul(op.Mul(taps, query), channel_weight)
        return op.ReduceSum(op.Reshape(products, shape(-1, T, groups, C // groups, K, H, W)), [3], keepdims=1)

    def aggregate(input, taps, scores, K: int, groups: int):
        """N×C×T×H×W: Σ_k scores × taps, with scores N×T×G×1×K×H×W."""
        _, C, T, H, W = input.shape
        grouped = op.Reshape(taps, shape(-1, T, groups, C // groups, K, H, W))
        out = op.ReduceSum(op.Mul(grouped, scores), [4], keepdims=0)
        return op.Transpose(op.Reshape(out, shape(-1, T, C, H, W)), perm=[0, 2, 1, 3, 4])

    def scores_layout(input, scores, K: int, groups: int):
        """N×T×G×1×K×H×W -> the ops' N×(G·K)×T×H×W."""
        _, _, T, H, W = input.shape
        return op.Transpose(op.Reshape(scores, shape(-1, T, groups * K, H, W)), perm=[0, 2, 1, 3, 4])

    def sifa_attention(input, offset, weight, stride, padding, dilation, groups):
        K = weight.shape[2] * weight.shape[3]
        taps = sample_taps(input, offset, weight.shape[2:], padding, dilation)
        scores = correlate(input, taps, weight, groups)
        return aggregate(input, taps, scores, K, groups), scores_layout(input, scores, K, groups)

    def defcor(input, offset, weight, stride, padding, dilation, groups):
        K = weight.shape[2] * weight.shape[3]
        taps = sample_taps(input, offset, weight.shape[2:], padding, dilation)
        return scores_layout(input, correlate(input, taps, weight, groups), K, groups)

    def defagg(input, offset, weight, kernel_size, stride, padding, dilation, groups):
        _, _, T, H, W = input.shape
        K = kernel_size[0] * kernel_size[1]
        taps = sample_taps(input, offset, kernel_size, padding, dilation)
        scores = op.Unsqueeze(op.Transpose(op.Reshape(weight, shape(-1, groups, K, T, H, W)),
                                           perm=[0, 3, 1, 2, 4, 5]), [3])  # N×T×G×1×K×H×W
        return aggregate(input, taps, scores, K, groups)

    if ops_backend() != "extension":
        return {}  # the pure-PyTorch reference is exported as the standard operators it is made of
    return {torch.ops.sifa.sifa_attention.default: sifa_attention, torch.ops.sifa.defcor.default: defcor,
            torch.ops.sifa.defagg.default: defagg}


def export(network: nn.Module, example: torch.Tensor, path: str, export_format: str,
           both_heads: bool = False) -> None:
    """Write ``network`` (in eval mode) for inputs shaped like ``example`` (any batch size) to ``path``.

    ``example`` needs a batch of 2 or more: torch.export fixes a dimension traced at size 1."""
    if export_format not in FORMATS:
        raise ValueError(f"unknown export format '{export_format}', expected one of {list(FORMATS)}")
    if example.shape[0] < 2:
        raise ValueError(f"the example batch must hold 2 or more views, got {example.shape[0]}")
    model = InferenceNetwork(network.eval(), both_heads).eval()
    with torch.no_grad():
        heads = len(network(example))
    if both_heads and heads < 2:
        raise ValueError(f"--heads both: the network has {heads} head")
    batch = {0: torch.export.Dim("batch", min=1)}
    if export_format == "pt2":
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(batch,)), path)
        return
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install -r requirements-extra.txt") from None
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
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise SystemExit(f"error: --out {out}: folder {out_dir} does not exist")
    try:
        cfg = load_config(args.config_file, args.opts)
        network = load_network(cfg, args.checkpoint, torch.device("cpu"))
        example = example_input(cfg, args.batch_size)
        export(network, example, out, args.format, args.heads == "both")
    except (ConfigError, CheckpointMismatchError, FileNotFoundError, ImportError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
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
