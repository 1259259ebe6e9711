"""Prepare data sets for training: decode videos into FRAME folders or LMDB environments, write list files.

Kinetics-style class folders (`<src>/<class name>/<video>.mp4`):

    python -m sifa.data.prepare videos --src data/k400/videos/train --out data/k400/train_lmdb \
        --format LMDB --list data/k400/train_list.txt --classes data/k400/classes.txt --short_side 256

`--format VIDEO` only writes the list (frame counts from OpenCV) for training on the files themselves.
`--classes` is read when it exists (so validation uses the training labels) and written otherwise.

Something-Something V1 frame folders (`<src>/<id>/00001.jpg`) with a `<id>;<class name>` CSV:

    python -m sifa.data.prepare frames --src data/ssv1/frames --labels something-something-v1-train.csv \
        --classes something-something-v1-labels.csv --list data/ssv1/train_list.txt
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .storage import count_video_frames, write_frame_folder, write_lmdb

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def decode_video(path: str, short_side: Optional[int]) -> List[np.ndarray]:
    capture = cv2.VideoCapture(path)
    frames = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if short_side:
                height, width = image.shape[:2]
                scale = short_side / min(height, width)
                image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def _convert(job: Tuple[str, str, str, Optional[int]]) -> Tuple[str, int]:
    """Returns (source, number of frames); 0 marks a video OpenCV could not decode."""
    source, target, storage_format, short_side = job
    if storage_format == "VIDEO":
        return source, count_video_frames(source)
    frames = decode_video(source, short_side)
    if frames:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        (write_frame_folder if storage_format == "FRAME" else write_lmdb)(target, frames)
    return source, len(frames)


def _class_names(path: str, found: List[str]) -> List[str]:
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(name + "\n" for name in found)
    return found


def prepare_videos(args: argparse.Namespace) -> None:
    found = sorted(d for d in os.listdir(args.src) if os.path.isdir(os.path.join(args.src, d)))
    names = _class_names(args.classes, found)
    labels = {name: index for index, name in enumerate(names)}
    jobs, relatives = [], {}
    for name in found:
        if name not in labels:
            raise ValueError(f"class folder '{name}' is not in {args.classes}")
        for video in sorted(os.listdir(os.path.join(args.src, name))):
            stem, extension = os.path.splitext(video)
            if extension.lower() not in VIDEO_EXTENSIONS:
                continue
            source = os.path.join(args.src, name, video)
            relative = os.path.join(name, video if args.format == "VIDEO" else stem)
            relatives[source] = (relative, labels[name])
            jobs.append((source, os.path.join(args.out, relative), args.format, args.short_side))
    lines = []
    with ProcessPoolExecutor(args.workers) as pool:
        for source, count in pool.map(_convert, jobs, chunksize=4):
            relative, label = relatives[source]
            if count == 0:
                print(f"skipped (cannot decode): {source}")
                continue
            lines.append(f"{relative} {count} {label}\n")
    with open(args.list, "w", encoding="utf-8") as f:
        f.writelines(lines)
    print(f"{len(lines)} of {len(jobs)} videos listed in {args.list}")


def prepare_frame_list(args: argparse.Namespace) -> None:
    with open(args.classes, "r", encoding="utf-8") as f:
        labels: Dict[str, int] = {line.strip(): i for i, line in enumerate(f) if line.strip()}
    lines = []
    with open(args.labels, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            video, _, name = line.strip().partition(";")
            if name not in labels:
                raise ValueError(f"{args.labels}, line {number}: class '{name}' is not in {args.classes}")
            folder = os.path.join(args.src, video)
            count = len([p for p in os.listdir(folder) if p.endswith(".jpg")])
            lines.append(f"{video} {count} {labels[name]}\n")
    with open(args.list, "w", encoding="utf-8") as f:
        f.writelines(lines)
    print(f"{len(lines)} videos listed in {args.list}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    videos = commands.add_parser("videos", help="class folders of video files")
    videos.add_argument("--src", required=True)
    videos.add_argument("--out", default="", help="output root (FRAME / LMDB)")
    videos.add_argument("--format", choices=["FRAME", "LMDB", "VIDEO"], required=True)
    videos.add_argument("--list", required=True, help="list file to write")
    videos.add_argument("--classes", required=True, help="class-name file: read if present, else written")
    videos.add_argument("--short_side", type=int, default=None, help="resize frames to this shorter side")
    videos.add_argument("--workers", type=int, default=os.cpu_count())
    frames = commands.add_parser("frames", help="existing frame folders with an '<id>;<class>' CSV")
    frames.add_argument("--src", required=True)
    frames.add_argument("--labels", required=True)
    frames.add_argument("--classes", required=True, help="class names, one per line")
    frames.add_argument("--list", required=True)
    args = parser.parse_args()
    if args.command == "videos":
        if args.format != "VIDEO" and not args.out:
            parser.error("--out is needed for FRAME and LMDB")
        if args.format == "VIDEO":
            args.out = args.src
        prepare_videos(args)
    else:
        prepare_frame_list(args)


if __name__ == "__main__":
    main()
