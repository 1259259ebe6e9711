"""Where SIFA looks: the deformed K×K sampling positions of SIFA layers, drawn on the frames.

    python -m sifa.tools.visualize --config_file settings/X.yml --checkpoint ckpt.pth --input PATH \
        --out DIR [--block layer2.1 ...] [--points N] [--view V] [--clip_to_image]

Any network with SIFA layers (``sifa.layers.SIFA``): SIFA-Net's bottlenecks, SIFA-Swin's
non-shifted blocks (a fixed window: zero offsets), the layers of an inflated 2-D network. One test
view of the video (view V of the evaluation's clips x crops, default the first) goes through the
network with a forward hook on each chosen layer (default: all of them; a layer is named by its
module, or by the block that holds it, e.g. ``layer2.1``), capturing its input features f
(N×C×T×h×w). The layer computes its scores inside the fused ``sifa_attention`` op, so offsets
and scores are recomputed from f with the layer's own ``offsets`` and ``def_cor`` (docs/design.md
§4.1). Frame t aggregates the K×K deformed neighbourhood of frame t+1, sampled with the offsets
and weighted by the scores of frame t+1. For N query pixels of feature frame t,
DIR/<block>_t<t>.png shows the query pixels on frame t and their taps on frame t+1, coloured and
sized by score (the key view widens to show taps outside the image, unless --clip_to_image);
DIR/<block>_t<t>.json holds the plotted coordinates ([y, x], feature-map and image pixels);
DIR/clip.gif animates the view. Layers the forward does not run (the shifted SIFA-Swin blocks
take their temporal convolution) are skipped.

Tap k = i·kw + j of feature pixel (h, w) lies at (docs/design.md §2.1)

    y = h − pad + i·dil + offset[2k],  x = w − pad + j·dil + offset[2k+1]     (feature map)
    image = (feature + 0.5)·stride − 0.5                                       (pixel centres)

A feature frame stands for `s` = L / T input frames (SIFA-Net's stem and SIFA-Swin's patches fold 4,
an inflated 2-D network none); the image shown for it is the middle one of its window, input frame
t·s + s // 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ..config import load_config  # noqa: E402
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ..errors import ConfigError, InputError, exit_on_user_error  # noqa: E402
from ..models.build import load_network  # noqa: E402
from ..layers import SIFA, sifa_layers  # noqa: E402
from ..apis import input_views  # noqa: E402
from ..user_files import check_output_folder  # noqa: E402

DEFAULT_POINTS = 4
GIF_MIN_SIDE = 256
GIF_FRAME_MS = 200
QUERY_COLOURS = plt.get_cmap("tab10").colors


@dataclass
class BlockCapture:
    features: Tensor  # the layer's input f, N×C×T×h×w
    offset: Tensor  # the layer's offsets of f, N×2K²×T×h×w
    scores: Tensor  # def_cor(f, offset), N×(G·K²)×T×h×w


def capture_blocks(model: nn.Module, clip: Tensor, layers: Dict[str, SIFA]) -> Dict[str, BlockCapture]:
    """Run `clip` (N×3×L×H×W) through `model`; each layer that ran: its input, offsets and scores."""
    inputs: Dict[str, Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
               for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model(clip)
            found = {}
            for name, features in inputs.items():
                offset = layers[name].offsets(features)
                found[name] = BlockCapture(features, offset, layers[name].def_cor(features, offset))
    finally:
        for handle in handles:
            handle.remove()
    return {name: BlockCapture(*(t.float().cpu() for t in (c.features, c.offset, c.scores)))
            for name, c in found.items()}


def feature_to_image(coordinate: float, stride: int) -> float:
    """Feature-map coordinate -> image pixel coordinate (pixel centres at integers)."""
    return (coordinate + 0.5) * stride - 0.5


def block_stride(image_size: int, feature_size: int) -> int:
    """The block's spatial stride: a power of two (stem 4, then 2 per stage); rounding the log covers
    maps whose odd sizes were rounded up by padded strided convolutions."""
    return 2 ** round(math.log2(image_size / feature_size))


def query_pixels(height: int, width: int, count: int) -> List[Tuple[int, int]]:
    """`count` feature pixels spread evenly over the map: centres of a ⌈√count⌉² grid, row by row."""
    side = math.ceil(math.sqrt(count))
    pixels: List[Tuple[int, int]] = []
    for r in range(side):
        for c in range(side):
            pixel = (int((r + 0.5) * height / side), int((c + 0.5) * width / side))
            if pixel not in pixels:
                pixels.append(pixel)
    return pixels[:count]


def tap_layout(block: SIFA) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int], int]:
    """(kernel (kh, kw), padding, dilation, groups) of the layer's deformable sampling."""
    kh, kw = block.def_cor.weight.shape[2:]
    return (int(kh), int(kw)), block.def_cor.padding, block.def_cor.dilation, block.def_cor.groups


def frame_taps(capture: BlockCapture, block: SIFA, t: int, points: Sequence[Tuple[int, int]],
               stride: int) -> List[Dict[str, object]]:
    """For query pixels of feature frame t: the taps on frame t+1 (offsets and scores of frame t+1)."""
    (kh, kw), (pad_h, pad_w), (dil_h, dil_w), groups = tap_layout(block)
    taps_per_group = kh * kw
    offset = capture.offset[0, :, t + 1]
    # Groups (heads) share the taps; their scores are averaged (the networks use one group).
    scores = capture.scores[0, :, t + 1].reshape(groups, taps_per_group, *capture.scores.shape[3:]).mean(0)
    result = []
    for h, w in points:
        taps = []
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                dy, dx = float(offset[2 * k, h, w]), float(offset[2 * k + 1, h, w])
                fy, fx = h - pad_h + i * dil_h + dy, w - pad_w + j * dil_w + dx
                taps.append({"tap": k, "row": i, "col": j, "offset": [dy, dx], "feature": [fy, fx],
                             "image": [feature_to_image(fy, stride), feature_to_image(fx, stride)],
                             "score": float(scores[k, h, w])})
        result.append({"query": {"feature": [h, w],
                                 "image": [feature_to_image(h, stride), feature_to_image(w, stride)]},
                       "taps": taps})
    return result


def display_frames(clip: Tensor) -> np.ndarray:
    """Normalised 3×L×H×W clip -> L×H×W×3 floats in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (clip.cpu() * std + mean).clamp(0, 1).permute(1, 2, 3, 0).numpy()


def key_view(points: List[Dict[str, object]], height: int, width: int,
             clip_to_image: bool) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """(x limits, y limits, top row last) of the key frame's view. Taps may leave the image (out-of-range samples
    read zeros): the view widens to show them, unless clipped to the image (far taps of deep layers would shrink
    it to a thumbnail)."""
    if clip_to_image:
        return (-0.5, width - 0.5), (height - 0.5, -0.5)
    all_y = [tap["image"][0] for p in points for tap in p["taps"]]
    all_x = [tap["image"][1] for p in points for tap in p["taps"]]
    return ((min(-0.5, min(all_x) - 1), max(width - 0.5, max(all_x) + 1)),
            (max(height - 0.5, max(all_y) + 1), min(-0.5, min(all_y) - 1)))


def plot_taps(query_image: np.ndarray, key_image: np.ndarray, points: List[Dict[str, object]], title: str,
              path: str, clip_to_image: bool = False) -> None:
    fig, (ax_query, ax_key) = plt.subplots(1, 2, figsize=(10, 5.4))
    all_scores = [tap["score"] for p in points for tap in p["taps"]]
    max_score = max(abs(s) for s in all_scores) or 1.0
    # Scores of post-ReLU features are non-negative; the colour range only reaches below 0 if needed.
    colour_range = (min(0.0, min(all_scores)), max(max(all_scores), 1e-12))
    scatter = None
    for index, point in enumerate(points):
        colour = QUERY_COLOURS[index % len(QUERY_COLOURS)]
        qy, qx = point["query"]["image"]
        ax_query.plot(qx, qy, marker="x", color=colour, markersize=12, markeredgewidth=3)
        ax_key.plot(qx, qy, marker="x", color=colour, markersize=8, markeredgewidth=1.5, alpha=0.6)
        ys = [tap["image"][0] for tap in point["taps"]]
        xs = [tap["image"][1] for tap in point["taps"]]
        scores = [tap["score"] for tap in point["taps"]]
        sizes = [20 + 220 * abs(s) / max_score for s in scores]
        scatter = ax_key.scatter(xs, ys, s=sizes, c=scores, cmap="viridis", vmin=colour_range[0],
                                 vmax=colour_range[1], edgecolors=[colour], linewidths=1.5)
    for ax, image, label in ((ax_query, query_image, "query frame t"), (ax_key, key_image, "key frame t+1")):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label)
    x_limits, y_limits = key_view(points, *key_image.shape[:2], clip_to_image)
    ax_key.set_xlim(*x_limits)
    ax_key.set_ylim(*y_limits)
    fig.colorbar(scatter, ax=ax_key, fraction=0.046, pad=0.04, label="aggregation weight (score)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_gif(frames: np.ndarray, path: str) -> None:
    scale = max(1, math.ceil(GIF_MIN_SIDE / min(frames.shape[1:3])))
    images = [Image.fromarray((frame * 255).round().astype(np.uint8)).resize(
        (frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)


def visualize(model: nn.Module, clip: Tensor, out_dir: str, block_names: Optional[Sequence[str]] = None,
              num_points: int = DEFAULT_POINTS, description: Optional[Dict[str, object]] = None,
              clip_to_image: bool = False) -> List[str]:
    """Write the PNG/JSON pairs of the chosen SIFA layers and clip.gif for one 3×L×H×W view; returns the PNGs."""
    available = sifa_layers(model)
    if not available:
        raise InputError(f"{getattr(model, 'name', type(model).__name__)} has no SIFA layer to show")
    names = list(block_names) if block_names else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"not SIFA layers: {unknown}; choose from {list(available)}")
    if num_points < 1:
        raise InputError(f"--points must be positive, got {num_points}")
    os.makedirs(out_dir, exist_ok=True)
    device = next(model.parameters()).device
    captures = capture_blocks(model, clip.unsqueeze(0).to(device), {n: available[n] for n in names})
    frames = display_frames(clip)
    num_frames, image_h, image_w = frames.shape[:3]
    written = []
    for name in names:
        if name not in captures:
            print(f"{name}: skipped, the network did not run it (a shifted SIFA-Swin block takes its temporal "
                  f"convolution)")
            continue
        capture, block = captures[name], available[name]
        times, feat_h, feat_w = capture.offset.shape[2:]
        if times < 2:
            print(f"{name}: skipped, its feature map has a single frame (nothing to attend to)")
            continue
        stride = block_stride(image_h, feat_h)
        frames_per_step = num_frames // times
        points = query_pixels(feat_h, feat_w, min(num_points, feat_h * feat_w))
        (kh, kw), padding, dilation, groups = tap_layout(block)
        for t in range(times - 1):
            query_frame = t * frames_per_step + frames_per_step // 2
            key_frame = query_frame + frames_per_step
            plotted = frame_taps(capture, block, t, points, stride)
            stem = os.path.join(out_dir, f"{name}_t{t}")
            record = {**(description or {}), "block": name, "kernel_size": [kh, kw], "padding": list(padding),
                      "dilation": list(dilation), "groups": groups, "stride": stride,
                      "feature_size": [feat_h, feat_w], "image_size": [image_h, image_w],
                      "query_frame": t, "key_frame": t + 1, "query_image_frame": query_frame,
                      "key_image_frame": key_frame, "coordinates": "[y, x]", "points": plotted}
            with open(stem + ".json", "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
            plot_taps(frames[query_frame], frames[key_frame], plotted,
                      f"{name} (stride {stride}, {kh}×{kw} taps): feature frame {t} -> {t + 1} "
                      f"(input frames {query_frame} -> {key_frame})", stem + ".png", clip_to_image)
            written.append(stem + ".png")
    write_gif(frames, os.path.join(out_dir, "clip.gif"))
    return written


def main(argv: Optional[List[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="video file, FRAME folder or LMDB environment")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--block", action="append", default=None,
                        help="SIFA layer to show, by the name of its module or block, e.g. layer2.1 (repeatable; "
                             "default: all)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS, help="query pixels per frame")
    parser.add_argument("--view", type=int, default=0, help="test view: clip index x eva_num_crop + crop index")
    parser.add_argument("--clip_to_image", action="store_true",
                        help="keep the key frame's view to the image (taps outside it are not shown)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with exit_on_user_error():
        check_output_folder(args.out, "--out")
        cfg = load_config(args.config_file, args.opts)
        if cfg.time_dim != "T":
            raise ConfigError(f"{args.config_file}: visualising needs time_dim T, got {cfg.time_dim!r}")
        views = input_views(cfg, args.input)
        if not 0 <= args.view < len(views):
            raise InputError(f"--view must lie in [0, {len(views)}), got {args.view}")
        clip = views[args.view][0]
        model = load_network(cfg, args.checkpoint, device)
        written = visualize(model, clip, args.out, args.block, args.points,
                            {"input": args.input, "checkpoint": args.checkpoint, "view": args.view},
                            args.clip_to_image)
    for path in written:
        print(path)
    print(os.path.join(args.out, "clip.gif"))
    return written


if __name__ == "__main__":
    main()
