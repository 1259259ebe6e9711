"""ONNX translations of the SIFA ops: the operator's math in standard ONNX operators, for
``torch.onnx.export(..., custom_translation_table=onnx_translation_table())`` (`sifa.tools.export`).
Needs onnx and onnxscript (``pip install -r requirements-extra.txt``), imported on use.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .functional import backend as ops_backend

OPSET = 18  # GridSample's bilinear zero-padded sampling as onnxruntime runs it since opset 16


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
