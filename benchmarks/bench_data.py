"""Data loading speed. Test views (default): clips/s of FRAME, LMDB and VIDEO storage at 1 view and at
10 clips x 3 crops. Training (--train): clips/s per core of the training path, decoding alone vs the whole
per-clip path.

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

--train times the K400 recipe's training item (VideoDataset with TrainClipTransform at 224, one randomly
placed 16-frame clip at step 1, the uint8 clip that a DataLoader worker hands on) on one thread, as one
DataLoader worker runs it, against the same item with a transform that does nothing (decoding alone, the
same frames), and against the workers' part under augment_on_device (crop, resize and flip; the colour
steps run on the training device): --clips random clips each, median clips per CPU-second of --repeat
passes after a warm-up one (CPU time, so that other jobs on the machine weigh little).

    python benchmarks/bench_data.py [--frames 128] [--size 1280x720] [--gop 50] [--repeat 3]
    python benchmarks/bench_data.py --train [--frames 250] [--size 568x320] [--gop 250] [--clips 30]
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


def train_clips_per_s(root: str, storage_format: str, name: str, num_frames: int, backend: str, transform,
                      clips: int, repeat: int) -> float:
    """Median clips/s of ``clips`` training items of the video (random places, seeded alike for every case)."""
    import torch
    from sifa.data import VideoDataset, VideoRecord

    dataset = VideoDataset([VideoRecord(name, num_frames, 0)], os.path.join(root, storage_format), storage_format,
                           16, 1, 1, transform, train=True, video_backend=backend)
    rates = []
    for _ in range(repeat + 1):
        torch.manual_seed(0)
        start = time.process_time()  # CPU time: clips per core-second, whatever else loads the machine
        for _ in range(clips):
            dataset[0]
        rates.append(clips / (time.process_time() - start))
    return statistics.median(rates[1:])


def write_storages(root: str, frames: int, width: int, height: int, gop: int) -> None:
    from sifa.data.storage import write_frame_folder, write_lmdb
    from sifa.data.video_io import read_video_frames

    for storage_format in ("VIDEO", "LMDB"):
        os.makedirs(os.path.join(root, storage_format))
    make_h264_video(os.path.join(root, "VIDEO", "v.mp4"), frames, width, height, gop)
    decoded = read_video_frames(os.path.join(root, "VIDEO", "v.mp4"), range(1, frames + 1))
    write_frame_folder(os.path.join(root, "FRAME", "v"), decoded)
    write_lmdb(os.path.join(root, "LMDB", "v"), decoded)


def storage_cases():
    """(storage, video backend, row label) of every case: FRAME, LMDB and VIDEO with each installed backend."""
    from sifa.data.video_io import VIDEO_BACKENDS, backend_available

    cases = [("FRAME", "opencv", "FRAME"), ("LMDB", "opencv", "LMDB")]
    return cases + [("VIDEO", backend, f"VIDEO ({backend})") for backend in VIDEO_BACKENDS
                    if backend_available(backend)]


def train_main(args, width: int, height: int) -> None:
    import cv2
    import torch
    from sifa.data.transforms import TrainClipTransform

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as root:
        write_storages(root, args.frames, width, height, args.gop)
        print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, one thread; H.264 {width}x{height}, "
              f"{args.frames} frames, GOP {args.gop}; 16-frame training clips, crop 224; {args.clips} clips, "
              f"median of {args.repeat}")
        print("| storage | decode only, clips/s | training path, clips/s | path / decode time | "
              "colour on device: workers' clips/s | its path / decode time |")
        print("|---|---|---|---|---|---|")
        for storage_format, backend, label in storage_cases():
            name = "v.mp4" if storage_format == "VIDEO" else "v"
            decode = train_clips_per_s(root, storage_format, name, args.frames, backend, lambda frames: None,
                                       args.clips, args.repeat)
            full = train_clips_per_s(root, storage_format, name, args.frames, backend, TrainClipTransform(224),
                                     args.clips, args.repeat)
            crop_only = train_clips_per_s(root, storage_format, name, args.frames, backend,
                                          TrainClipTransform(224, colour=False), args.clips, args.repeat)
            print(f"| {label} | {decode:.1f} | {full:.1f} | {decode / full:.2f}x | {crop_only:.1f} | "
                  f"{decode / crop_only:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="time the training path instead of test views")
    parser.add_argument("--frames", type=int, help="frames of the generated video (default 128; --train: 250)")
    parser.add_argument("--size", help="WIDTHxHEIGHT of the generated video (default 1280x720; --train: 568x320, "
                                       "Kinetics clips as `prepare trim --short_side 320` writes them)")
    parser.add_argument("--gop", type=int, help="keyframe interval of the generated video (default 50; --train: "
                                                "250, x264's default)")
    parser.add_argument("--clips", type=int, default=30, help="--train: clips per pass")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, (args.size or ("568x320" if args.train else "1280x720")).lower().split("x"))
    if args.train:
        args.frames, args.gop = args.frames or 250, args.gop or 250
        return train_main(args, width, height)
    args.frames, args.gop = args.frames or 128, args.gop or 50
    longest = max(length * steps for length, steps in SAMPLINGS.values())
    if args.frames < longest:
        parser.error(f"--frames must be at least {longest}, the frames of one spanning clip")
    import torch

    with tempfile.TemporaryDirectory() as root:
        write_storages(root, args.frames, width, height, args.gop)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; H.264 {width}x{height}, "
              f"{args.frames} frames, GOP {args.gop}; crop {CROP}, batch {BATCH_SIZE}; median of {args.repeat}")
        print("| storage | sampling | views | ms per video | clips/s | vs 1 view |")
        print("|---|---|---|---|---|---|")
        for sampling in SAMPLINGS:
            for storage_format, backend, label in storage_cases():
                name = "v.mp4" if storage_format == "VIDEO" else "v"
                one_view_ms = None
                for clips, crops in VIEWS:
                    ms = median_ms(root, storage_format, name, args.frames, sampling, clips, crops, backend,
                                   args.repeat)
                    one_view_ms = one_view_ms or ms
                    print(f"| {label} | {sampling} | {clips}x{crops} | {ms:.0f} | {clips * crops / ms * 1e3:.1f} | "
                          f"{ms / one_view_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
