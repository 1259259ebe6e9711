"""Top-5 classes of one video, scored as the evaluation scores it.

    python -m sifa.tools.predict --config_file settings/X.yml --checkpoint ckpt.pth --input PATH

PATH is a video file (decoded with OpenCV), a FRAME folder (00001.jpg, ...) or an LMDB environment
(a folder holding data.mdb). The video is cut into the configured test views (eva_num_clips clips x
eva_num_crop crops of eva_crop_size, eva_num_segments segments) by the evaluation's own dataset and
transforms, and the softmax scores are averaged over the views and over both heads of a SIFA-Net,
as `--eval_only` does. Class names come from `--class_names` or the config's `class_name_file`;
without one, label indices are shown.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import load_config
from ..data import VideoDataset, VideoRecord, read_class_names
from ..data.build import build_eval_dataset
from ..data.storage import storage_of
from ..engine.distributed import DistContext
from ..engine.evaluate import evaluate
from ..engine.runtime import amp_dtype
from ..errors import exit_on_user_error
from ..models.build import load_network

TOP_K = 5


def input_views(cfg: SimpleNamespace, path: str) -> VideoDataset:
    """The test views of one video, built by the evaluation's dataset (its label is a placeholder)."""
    storage_format, num_frames = storage_of(path, cfg.video_backend)
    path = os.path.abspath(path)
    # The input's folder and storage format replace the configured evaluation set's.
    view_cfg = SimpleNamespace(**{**vars(cfg), "eva_root_path": os.path.dirname(path), "format": storage_format})
    return build_eval_dataset(view_cfg, final=True, videos=[VideoRecord(os.path.basename(path), num_frames, 0)])


def class_names_for(cfg: SimpleNamespace, class_name_file: Optional[str]) -> Optional[List[str]]:
    """Names from --class_names, else from the config's class_name_file; None shows label indices."""
    if class_name_file:
        return read_class_names(class_name_file, cfg.num_classes)
    if cfg.class_name_file:
        if os.path.isfile(cfg.class_name_file):
            return read_class_names(cfg.class_name_file, cfg.num_classes)
        print(f"warning: class_name_file {cfg.class_name_file} not found, showing label indices "
              f"(pass --class_names FILE)", file=sys.stderr)
    return None


def video_scores(model: torch.nn.Module, views: VideoDataset, cfg: SimpleNamespace,
                 device: torch.device) -> np.ndarray:
    """Softmax scores averaged over the views and heads, by the evaluation loop itself."""
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    # One video: data-loader worker processes would only add start-up time.
    result = evaluate(model, views, cfg.batch_size, 0, cfg.num_classes, ctx, amp_dtype(cfg, device))
    return result.scores[0]


def top_classes(scores: np.ndarray, class_names: Optional[List[str]], k: int = TOP_K) -> List[Dict[str, object]]:
    """The k best classes, best first: label, name (the index as text without names) and probability."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": int(i), "name": class_names[i] if class_names else str(int(i)),
             "probability": float(scores[i])} for i in order]


def predict(cfg: SimpleNamespace, checkpoint: str, path: str, class_name_file: Optional[str] = None,
            device: Optional[torch.device] = None) -> List[Dict[str, object]]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    views = input_views(cfg, path)
    model = load_network(cfg, checkpoint, device)
    return top_classes(video_scores(model, views, cfg, device), class_names_for(cfg, class_name_file))


def main(argv: Optional[List[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True, help="experiment YAML the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or bare state dict")
    parser.add_argument("--input", required=True, help="video file, FRAME folder or LMDB environment")
    parser.add_argument("--class_names", default=None,
                        help="class-name file (one per line, line i = label i); overrides class_name_file")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. eva_num_clips=1 eva_num_crop=1")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        cfg = load_config(args.config_file, args.opts)
        ranking = predict(cfg, args.checkpoint, args.input, args.class_names)
    views = cfg.eva_num_clips * cfg.eva_num_crop
    print(f"{args.input}: {views} view(s) ({cfg.eva_num_clips} clip(s) x {cfg.eva_num_crop} crop(s) at "
          f"{cfg.eva_crop_size}px) of {cfg.net_name}")
    for rank, entry in enumerate(ranking, start=1):
        print(f"{rank}. {entry['name']:<40} {entry['probability']:.4f}")
    return ranking


if __name__ == "__main__":
    main()
