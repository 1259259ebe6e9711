"""A trained network applied to videos, scored exactly as ``--eval_only`` scores a validation video.

    model = init_recognizer("settings/X.yml", "current.pth")
    inference_recognizer(model, "video.mp4")   # [{"label", "name", "probability"}, ...], best first

A video is a video file (decoded by the config's ``video_backend``), a FRAME folder (00001.jpg, ...),
an LMDB environment (a folder holding data.mdb) or an already decoded T x H x W x 3 uint8 RGB array.
The evaluation's own dataset and transforms cut it into the test views (eva_num_clips clips x
eva_num_crop crops of eva_crop_size, eva_num_segments segments of clip_length frames), and the
evaluation loop averages the softmax scores over the views and over both heads of a SIFA-Net.
"""
from __future__ import annotations

import functools
import os
import sys
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..config import load_config
from ..data import VideoDataset, VideoRecord, read_class_names
from ..data.build import build_eval_dataset
from ..data.storage import make_reader, storage_of
from ..data.video_io import open_video
from ..engine.distributed import DistContext
from ..engine.evaluate import evaluate
from ..engine.runtime import amp_dtype
from ..errors import InputError
from ..models.build import load_network

Video = Union[str, os.PathLike, np.ndarray]
FrameSource = Callable[[Sequence[int]], List[np.ndarray]]  # 1-based frame ids -> RGB frames


def class_names_for(cfg: SimpleNamespace, class_name_file: Optional[str] = None) -> Optional[List[str]]:
    """Names from ``class_name_file``, else from the config's class_name_file; None shows label indices."""
    if class_name_file:
        return read_class_names(class_name_file, cfg.num_classes)
    if cfg.class_name_file:
        if os.path.isfile(cfg.class_name_file):
            return read_class_names(cfg.class_name_file, cfg.num_classes)
        print(f"warning: class_name_file {cfg.class_name_file} not found, showing label indices "
              f"(pass --class_names FILE)", file=sys.stderr)
    return None


def init_recognizer(config_file: str | os.PathLike, checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                    opts: Optional[Sequence[str]] = None, class_name_file: Optional[str] = None) -> nn.Module:
    """The network of ``config_file`` (merged with ``opts``, ``key=value`` strings as ``--opts`` takes them) with
    every weight from ``checkpoint``, on ``device``, in eval mode. Its config is ``model.cfg``, its class names
    ``model.class_names`` (from ``class_name_file`` or the config's; None: label indices are shown)."""
    cfg = load_config(str(config_file), list(opts or []))
    model = load_network(cfg, str(checkpoint), torch.device(device))
    model.cfg = cfg
    model.class_names = class_names_for(cfg, class_name_file)
    return model


def _check_array(video: np.ndarray) -> np.ndarray:
    if video.ndim != 4 or video.shape[3] != 3 or video.dtype != np.uint8 or 0 in video.shape:
        raise InputError(f"a decoded video must be a non-empty T x H x W x 3 uint8 RGB array, got shape "
                         f"{tuple(video.shape)} of {video.dtype}")
    return video


def frame_source(video: Video, cfg: SimpleNamespace) -> Tuple[str, str, int, FrameSource]:
    """(name, storage format, number of frames, read) of a video in any of the forms the module takes; the
    name (the absolute path of a file or folder) is what error messages show."""
    if isinstance(video, np.ndarray):
        frames = _check_array(video)
        return "decoded array", "ARRAY", len(frames), lambda frame_ids: [frames[i - 1] for i in frame_ids]
    path = os.path.abspath(video)
    storage_format, num_frames = storage_of(path, cfg.video_backend)
    return path, storage_format, num_frames, functools.partial(make_reader(storage_format, cfg.video_backend), path)


def _views_of(cfg: SimpleNamespace, name: str, storage_format: str, num_frames: int,
              read: FrameSource) -> VideoDataset:
    # Unreadable frames are an error here, not a view left out: the one video would go unscored. The
    # name is absolute (or not a path), so the dataset's root does not change it in messages; an array
    # passes as FRAME, a format that then only names frame files in a frame-size message (its frames
    # share one size).
    view_cfg = SimpleNamespace(**{**vars(cfg), "skip_bad_samples": False,
                                  "format": "FRAME" if storage_format == "ARRAY" else storage_format})
    views = build_eval_dataset(view_cfg, final=True, videos=[VideoRecord(name, num_frames, 0)])
    # The frames come from `read` (a file, folder, environment, array or a window of one), not the storage format.
    views.read = lambda _path, frame_ids: read(frame_ids)
    return views


def input_views(cfg: SimpleNamespace, video: Video) -> VideoDataset:
    """The test views of one video, built by the evaluation's dataset (its label is a placeholder)."""
    return _views_of(cfg, *frame_source(video, cfg))


def preprocess(video: Video, cfg: SimpleNamespace) -> torch.Tensor:
    """Every test view of ``video`` as the network (and its ONNX export, input ``video``) takes them: a
    V x 3 x T x H x W float32 batch (V = eva_num_clips x eva_num_crop, view v = clip v // eva_num_crop,
    crop v % eva_num_crop; T x H x W as ``time_dim`` orders them), normalised as in evaluation. The
    video's score is the mean over the views of the softmax of each head's logits."""
    views = input_views(cfg, video)
    return torch.stack([views[i][0] for i in range(len(views))])


def _scores_of_views(model: nn.Module, views: VideoDataset) -> np.ndarray:
    cfg = model.cfg
    device = next(model.parameters()).device
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    # One video: data-loader worker processes would only add start-up time, a progress bar only noise.
    return evaluate(model, views, cfg.batch_size, 0, cfg.num_classes, ctx, amp_dtype(cfg, device),
                    show_progress=False).scores[0]


def video_scores(model: nn.Module, video: Video) -> np.ndarray:
    """The class probabilities of ``video`` (float64, one per class), by the evaluation loop itself."""
    return _scores_of_views(model, input_views(model.cfg, video))


def ranked_classes(scores: np.ndarray, class_names: Optional[List[str]],
                   top_k: Optional[int] = None) -> List[Dict[str, object]]:
    """The ``top_k`` best classes (all without it), best first: label, name (the index as text without
    names) and probability."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": int(i), "name": class_names[i] if class_names else str(int(i)),
             "probability": float(scores[i])} for i in order]


def inference_recognizer(model: nn.Module, video: Video, top_k: Optional[int] = None) -> List[Dict[str, object]]:
    """The classes of ``video`` with their probabilities, best first (``top_k`` of them; default all)."""
    return ranked_classes(video_scores(model, video), model.class_names, top_k)


def frame_rate(video: Video, cfg: SimpleNamespace, fps: Optional[float]) -> float:
    """``fps`` if given, else a video file's own frame rate; FRAME folders, LMDB environments and arrays
    carry none."""
    if fps is not None:
        if not fps > 0:
            raise InputError(f"the frame rate must be positive, got {fps}")
        return float(fps)
    if isinstance(video, np.ndarray) or not os.path.isfile(video):
        raise InputError(f"{'a decoded array' if isinstance(video, np.ndarray) else video} has no frame rate of its "
                         f"own: give it (--fps)")
    stream = open_video(os.fspath(video), cfg.video_backend)
    try:
        return float(stream.fps)
    finally:
        stream.close()


def window_frames(num_frames: int, fps: float, window: float, stride: float, name: str) -> List[Tuple[int, int]]:
    """(first frame index, 0-based, number of frames) of each window: ``window`` seconds long, starting every
    ``stride`` seconds from the first frame, as many as fit in the video."""
    length, step = round(window * fps), round(stride * fps)
    if length < 1 or step < 1:
        raise InputError(f"window ({window}s) and stride ({stride}s) must each span at least one frame at {fps} fps")
    if num_frames < length:
        raise InputError(f"{name}: {num_frames} frames ({num_frames / fps:.2f}s at {fps} fps) are shorter than "
                         f"one window of {window}s")
    return [(start, length) for start in range(0, num_frames - length + 1, step)]


def inference_windows(model: nn.Module, video: Video, window: float, stride: float, fps: Optional[float] = None,
                      top_k: Optional[int] = None) -> List[Dict[str, object]]:
    """Each ``window``-second cut of ``video``, every ``stride`` seconds, scored as a video of its own: per
    window its ``start`` and ``end`` (seconds), first frame and frame count, and its classes, best first.
    ``fps`` defaults to a video file's frame rate."""
    cfg = model.cfg
    rate = frame_rate(video, cfg, fps)
    name, storage_format, num_frames, read = frame_source(video, cfg)
    windows = []
    for start, length in window_frames(num_frames, rate, window, stride, name):
        cut = functools.partial(lambda first, frame_ids: read([first + i for i in frame_ids]), start)
        scores = _scores_of_views(model, _views_of(cfg, f"{name} [{start / rate:.2f}s]", storage_format, length, cut))
        windows.append({"start": start / rate, "end": (start + length) / rate, "first_frame": start,
                        "num_frames": length, "classes": ranked_classes(scores, model.class_names, top_k)})
    return windows
