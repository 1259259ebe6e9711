"""Test-view loading speed: clips/s of FRAME, LMDB and VIDEO storage at 1 view and at 10 clips x 3 crops.

Generates one H.264 video (PyAV's libx264 at CRF 18; OpenCV's wheels cannot encode H.264) and its FRAME folder
and LMDB environment, then times the evaluation's data path — VideoDataset with EvalClipTransform
(crop 224) through a DataLoader (batch 8, no worker processes, as `sifa.tools.predict` runs it) —
over all views of the video, each time with a new dataset so nothing decoded before is reused;
the median of --repeat passes after a warm-up one. Three samplings of 16-frame clips:

  spanning     num_steps 8: a clip spans the whole 128-frame video, so all 10 clips are the same
               frames (the 10x3 target: <= 2x the time of one view);
  overlapping  num_steps 4: 10 clips of 64 frames spread over the video; with their different
               offsets they need 4x the distinct frames of one;
  short        num_steps 1: 10 separate 16-frame stretches, 10x the frames of one clip.

    python benchmarks/bench_data.py [--frames 128] [--size 1280x720] [--gop 50] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

SAMPLINGS = {"spanning": (16, 8), "overlapping": (16, 4), "short": (16, 1)}  # name -> (clip_length, num_steps)
VIEWS = [(1, 1), (10, 3)]  # (clips, crops)
BATCH_SIZE = 8
CROP = 224


def make_h264_video(path: str, num_frames: int, width: int, height: int, gop: int, fps: int = 25) -> None:
    """A textured scene panning, with noise: a bit rate like camera footage's."""
    import cv2
    import numpy as np
    from sifa.data.video_io import VideoWriter

    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.integers(0, 256, (height // 16, width // 8, 3), dtype=np.uint8), (2 * width, height),
                       interpolation=cv2.INTER_CUBIC)
    with VideoWriter(path, fps, width, height, backend="pyav", keyframe_interval=gop) as writer:
        for index in range(num_frames):
            pan = 4 * index % width
            frame = scene[:, pan:pan + width].copy()
            frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
            cv2.putText(frame, str(index), (width // 3, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 6, (255, 255, 255), 12)
            writer.write(frame)


def median_ms(root: str, storage_format: str, name: str, num_frames: int, sampling: str, clips: int, crops: int,
              backend: str, repeat: int) -> float:
    """Median milliseconds of one pass over every view of the video, each with a fresh dataset."""
    from torch.utils.data import DataLoader
    from sifa.data import VideoDataset, VideoRecord
    from sifa.data.transforms import EvalClipTransform

    clip_length, num_steps = SAMPLINGS[sampling]
    record = VideoRecord(name, num_frames, 0)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        dataset = VideoDataset([record], os.path.join(root, storage_format), storage_format, clip_length, num_steps,
                               1, EvalClipTransform(CROP, crops), train=False, num_clips=clips, num_crops=crops,
                               video_backend=backend)
        for _ in DataLoader(dataset, batch_size=BATCH_SIZE):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the generated video")
    parser.add_argument("--gop", type=int, default=50, help="keyframe interval of the generated video")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    longest = max(length * steps for length, steps in SAMPLINGS.values())
    if args.frames < longest:
        parser.error(f"--frames must be at least {longest}, the frames of one spanning clip")
    import torch
    from sifa.data.storage import write_frame_folder, write_lmdb
    from sifa.data.video_io import read_video_frames

    with tempfile.TemporaryDirectory() as root:
        for storage_format in ("VIDEO", "LMDB"):
            os.makedirs(os.path.join(root, storage_format))
        make_h264_video(os.path.join(root, "VIDEO", "v.mp4"), args.frames, width, height, args.gop)
        frames = read_video_frames(os.path.join(root, "VIDEO", "v.mp4"), range(1, args.frames + 1))
        write_frame_folder(os.path.join(root, "FRAME", "v"), frames)
        write_lmdb(os.path.join(root, "LMDB", "v"), frames)
        del frames
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; H.264 {width}x{height}, "
              f"{args.frames} frames, GOP {args.gop}; crop {CROP}, batch {BATCH_SIZE}; median of {args.repeat}")
        print("| storage | sampling | views | ms per video | clips/s | vs 1 view |")
        print("|---|---|---|---|---|---|")
        cases = [("FRAME", "opencv"), ("LMDB", "opencv"), ("VIDEO", "opencv"), ("VIDEO", "pyav")]
        for sampling in SAMPLINGS:
            for storage_format, backend in cases:
                name = "v.mp4" if storage_format == "VIDEO" else "v"
                label = f"VIDEO ({backend})" if storage_format == "VIDEO" else storage_format
                one_view_ms = None
                for clips, crops in VIEWS:
                    ms = median_ms(root, storage_format, name, args.frames, sampling, clips, crops, backend,
                                   args.repeat)
                    one_view_ms = one_view_ms or ms
                    print(f"| {label} | {sampling} | {clips}x{crops} | {ms:.0f} | {clips * crops / ms * 1e3:.1f} | "
                          f"{ms / one_view_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
