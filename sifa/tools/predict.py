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
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import ConfigError, load_config
from ..data import ClipTooShortError, FrameReadError, ListFileError, VideoDataset, VideoRecord, read_class_names
from ..data.build import build_eval_dataset
from ..data.storage import count_video_frames, frame_file_name
from ..engine.distributed import DistContext
from ..engine.evaluate import evaluate
from ..engine.runtime import amp_dtype
from ..models.build import load_network
from ..models.weights import CheckpointError

TOP_K = 5


class InputError(ValueError):
    """An input that does not exist or holds no readable frame."""


def storage_of(path: str, video_backend: str = "opencv") -> Tuple[str, int]:
    """(storage format, number of frames) of a video file (decoded by ``video_backend``), FRAME folder or
    LMDB environment."""
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if os.path.isfile(path):
        count = count_video_frames(path, video_backend)
        if count == 0:
            raise InputError(f"cannot read input video {path}: video_backend {video_backend} decodes no frame "
                             f"from it")
        return "VIDEO", count
    if os.path.isfile(os.path.join(path, "data.mdb")):
        import lmdb  # only for LMDB input

        try:
            env = lmdb.open(path, readonly=True, lock=False)
        except lmdb.Error as err:
            raise InputError(f"cannot read input LMDB environment {path}: {err}") from None
        try:
            count = env.stat()["entries"]
        finally:
            env.close()
        if count == 0:
            raise InputError(f"input LMDB environment {path} holds no frames")
        return "LMDB", count
    count = 0
    while os.path.isfile(os.path.join(path, frame_file_name(count + 1))):
        count += 1
    if count == 0:
        raise InputError(f"cannot read input folder {path}: it holds no frame {frame_file_name(1)} "
                         f"(FRAME folders are numbered 00001.jpg, 00002.jpg, ...) and no LMDB data.mdb")
    # A gap would end the video there: its later frames would be dropped without a word.
    later = [name for name in os.listdir(path) if name > frame_file_name(count + 1) and len(name) == 9
             and name.endswith(".jpg") and name[:5].isdigit()]
    if later:
        raise InputError(f"input folder {path}: frame {frame_file_name(count + 1)} is missing, but {len(later)} "
                         f"later frames (up to {max(later)}) exist; FRAME folders are numbered without gaps")
    return "FRAME", count


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
    try:
        cfg = load_config(args.config_file, args.opts)
        ranking = predict(cfg, args.checkpoint, args.input, args.class_names)
    except (ConfigError, InputError, ClipTooShortError, CheckpointError, FrameReadError, ListFileError,
            FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    views = cfg.eva_num_clips * cfg.eva_num_crop
    print(f"{args.input}: {views} view(s) ({cfg.eva_num_clips} clip(s) x {cfg.eva_num_crop} crop(s) at "
          f"{cfg.eva_crop_size}px) of {cfg.net_name}")
    for rank, entry in enumerate(ranking, start=1):
        print(f"{rank}. {entry['name']:<40} {entry['probability']:.4f}")
    return ranking


if __name__ == "__main__":
    main()
