"""Prepare data sets for training: cut clips from annotated videos, decode videos into FRAME folders or
LMDB environments, write list files. The command line is `python -m sifa.tools.prepare` (its usage
there and in docs/training.md); every command checks the files it will write before it decodes anything.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..user_files import check_output_file
from .storage import count_video_frames, write_frame_folder, write_lmdb
from .video_io import FrameReadError, VideoWriter, decode_all, read_time_range

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]
PLAIN_HEADER = ["path", "start", "end", "label"]


class PrepareError(UserError, ValueError):
    """Input or output paths that cannot be used; the message names the file (and line)."""


def resized(image: np.ndarray, short_side: Optional[int], even: bool = False) -> np.ndarray:
    """``image`` with its shorter side at ``short_side`` (if given) and, if ``even``, even width and
    height (H.264's 4:2:0 chroma needs them)."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width) if short_side else 1.0
    size = [max(1, round(width * scale)), max(1, round(height * scale))]
    if even:
        size = [max(2, s - s % 2) for s in size]
    if size == [width, height]:
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


def check_input(path: str, option: str, folder: bool) -> None:
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise PrepareError(f"{option} {path}: {'folder' if folder else 'file'} not found")


def class_labels(path: str, found: Iterable[str]) -> Dict[str, int]:
    """Class name -> label from the class-name file ``path`` if it exists; else the names ``found``,
    sorted (numbers by value), written there."""
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = sorted(set(found), key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(name + "\n" for name in names)
    return {name: index for index, name in enumerate(names)}


def run_jobs(work: Callable, jobs: Sequence, workers: int, description: str) -> Iterator[Tuple[int, object]]:
    """(job index, result) of ``work(job)`` for every job, in worker processes, with a progress bar."""
    with ProcessPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(work, job): index for index, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=description, unit="video"):
            yield futures[future], future.result()


def write_list(path: str, lines: List[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


# ---------------------------------------------------------------------------------------------- videos
def stated_frame_count(video: str) -> int:
    """The number of frames a video file's header states (read by OpenCV whatever the decoder); 0 if none."""
    capture = cv2.VideoCapture(video)
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()


def write_video(target: str, frames: Sequence[np.ndarray], fps: float, backend: str,
                keyframe_interval: Optional[int]) -> None:
    """Encode ``frames`` to ``target`` under a temporary name, renamed when complete (an interrupted run
    leaves no half-written video)."""
    partial = target[:-len(".mp4")] + ".part.mp4"
    with VideoWriter(partial, fps, frames[0].shape[1], frames[0].shape[0], backend, keyframe_interval) as writer:
        for frame in frames:
            writer.write(frame)
    os.replace(partial, target)


def _convert(job: Tuple[str, str, str, Optional[int], str, Optional[int]]) -> Tuple[int, int]:
    """(frames of the video written as FRAME/LMDB or re-encoded, or counted for VIDEO listed in place, 0
    when none decodes; frames its header states)."""
    source, target, storage_format, short_side, backend, keyframe_interval = job
    stated = stated_frame_count(source)
    if storage_format == "VIDEO" and target == source:
        return count_video_frames(source, backend), stated
    try:
        if storage_format == "VIDEO":
            frames, fps = read_time_range(source, 0.0, float("inf"), backend)
            frames = [resized(frame, short_side, even=True) for frame in frames]
        else:
            frames = [resized(frame, short_side) for frame in decode_all(source, backend)]
    except FrameReadError:
        return 0, stated
    if frames:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if storage_format == "VIDEO":
            write_video(target, frames, fps, backend, keyframe_interval)
        else:
            (write_frame_folder if storage_format == "FRAME" else write_lmdb)(target, frames)
    return len(frames), stated


def prepare_videos(args: argparse.Namespace) -> None:
    check_input(args.src, "--src", folder=True)
    for path, option in ((args.list, "--list"), (args.classes, "--classes")):
        check_output_file(path, option)
    found = sorted(d for d in os.listdir(args.src) if os.path.isdir(os.path.join(args.src, d)))
    labels = class_labels(args.classes, found)
    root = args.out or args.src  # VIDEO without --out: listed where they are
    jobs, entries = [], []
    for name in found:
        if name not in labels:
            raise PrepareError(f"class folder '{name}' is not in {args.classes}")
        for video in sorted(os.listdir(os.path.join(args.src, name))):
            stem, extension = os.path.splitext(video)
            if extension.lower() not in VIDEO_EXTENSIONS:
                continue
            if args.format != "VIDEO":
                relative = os.path.join(name, stem)
            else:
                relative = os.path.join(name, video if root == args.src else stem + ".mp4")
            entries.append((relative, labels[name]))
            jobs.append((os.path.join(args.src, name, video), os.path.join(root, relative), args.format,
                         args.short_side, args.video_backend, args.keyint))
    counts = dict(run_jobs(_convert, jobs, args.workers, "videos"))
    lines = []
    for index, (relative, label) in enumerate(entries):
        decoded, stated = counts[index]
        if decoded == 0:
            print(f"skipped (no frame decodes): {jobs[index][0]}")
            continue
        if decoded < stated:  # cut short or damaged: listed with the frames that decode
            print(f"warning: {jobs[index][0]}: only {decoded} of the {stated} frames its header states decode "
                  f"(cut short or damaged?); listed with {decoded}", file=sys.stderr)
        lines.append(f"{relative} {decoded} {label}\n")
    write_list(args.list, lines)
    print(f"{len(lines)} of {len(jobs)} videos listed in {args.list} (paths relative to {root})")


# ------------------------------------------------------------------------------------------------ trim
@dataclass(frozen=True)
class Annotation:
    line: int  # in the annotation file
    source: str  # the full video
    start: float  # seconds
    end: float
    label: str  # class name
    name: str  # output file name, without extension


def _time_text(seconds: float) -> str:
    """Kinetics names clips `<id>_<start:06d>_<end:06d>`; fractions keep 3 decimals."""
    return f"{int(seconds):06d}" if seconds == int(seconds) else f"{seconds:010.3f}"


def _find_source(src: str, youtube_id: str) -> str:
    for extension in VIDEO_EXTENSIONS:
        path = os.path.join(src, youtube_id + extension)
        if os.path.isfile(path):
            return path
    return os.path.join(src, youtube_id + VIDEO_EXTENSIONS[0])  # reported as missing when cut


def read_annotations(path: str, src: str) -> List[Annotation]:
    """The clips of a Kinetics CSV (recognised by its header) or of a plain `path,start,end,label` one."""
    with open(path, "r", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    kinetics = bool(rows) and [c.strip() for c in rows[0]] == KINETICS_HEADER
    plain_header = bool(rows) and [c.strip() for c in rows[0]] == PLAIN_HEADER
    annotations = []
    for number, row in enumerate(rows, start=1):
        if (number == 1 and (kinetics or plain_header)) or not any(c.strip() for c in row):
            continue
        layout = KINETICS_HEADER if kinetics else PLAIN_HEADER
        if len(row) != len(layout):
            raise PrepareError(f"{path}, line {number}: expected {len(layout)} fields ({','.join(layout)}), "
                               f"got {len(row)}")
        fields = dict(zip(layout, (c.strip() for c in row)))
        try:
            start, end = float(fields["time_start" if kinetics else "start"]), float(fields["time_end" if kinetics
                                                                                             else "end"])
        except ValueError:
            raise PrepareError(f"{path}, line {number}: start and end must be seconds, got {row}") from None
        if not 0 <= start < end:
            raise PrepareError(f"{path}, line {number}: needs 0 <= start < end, got {start} and {end}")
        if not fields["label"]:
            raise PrepareError(f"{path}, line {number}: no label")
        label = fields["label"]
        if kinetics:  # class folders as the original's (data_lists/kinetics400_classes.txt): no spaces
            source, stem, label = _find_source(src, fields["youtube_id"]), fields["youtube_id"], label.replace(" ", "_")
        else:
            source, stem = os.path.join(src, fields["path"]), os.path.splitext(os.path.basename(fields["path"]))[0]
        annotations.append(Annotation(number, source, start, end, label,
                                      f"{stem}_{_time_text(start)}_{_time_text(end)}"))
    if not annotations:
        raise PrepareError(f"{path}: no annotation")
    return annotations


def _cut(job: Tuple[Annotation, str, Optional[int], bool, str, Optional[int]]) -> Tuple[int, str]:
    """(frames in the clip, '') or (0, why it failed); an existing clip is counted if ``skip_existing``."""
    annotation, target, short_side, skip_existing, backend, keyframe_interval = job
    if skip_existing and os.path.isfile(target):
        count = count_video_frames(target, backend)
        return (count, "") if count else (0, f"existing output {target} decodes no frame")
    if not os.path.isfile(annotation.source):
        return 0, "source video not found"
    try:
        frames, fps = read_time_range(annotation.source, annotation.start, annotation.end, backend)
        if not frames:
            return 0, f"no frame decodes between {annotation.start} s and {annotation.end} s"
        write_video(target, [resized(frame, short_side, even=True) for frame in frames], fps, backend,
                    keyframe_interval)
    except (FrameReadError, OSError, ValueError) as err:
        return 0, str(err)
    return len(frames), ""


def trim_videos(args: argparse.Namespace) -> None:
    check_input(args.annotations, "--annotations", folder=False)
    check_input(args.src, "--src", folder=True)
    failed_report = args.failed or os.path.splitext(args.list)[0] + "_failed.txt"
    for path, option in ((args.list, "--list"), (args.classes, "--classes"), (failed_report, "--failed")):
        check_output_file(path, option)
    annotations = read_annotations(args.annotations, args.src)
    targets: Dict[str, int] = {}
    for annotation in annotations:
        target = os.path.join(annotation.label, annotation.name + ".mp4")
        if target in targets:
            raise PrepareError(f"{args.annotations}, lines {targets[target]} and {annotation.line}: the same clip "
                               f"({target})")
        targets[target] = annotation.line
    labels = class_labels(args.classes, (a.label for a in annotations))
    unknown = next((a for a in annotations if a.label not in labels), None)
    if unknown:
        raise PrepareError(f"{args.annotations}, line {unknown.line}: class '{unknown.label}' is not in {args.classes}")
    relatives = list(targets)
    for folder in {os.path.dirname(r) for r in relatives}:
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    jobs = [(a, os.path.join(args.out, r), args.short_side, args.skip_existing, args.video_backend, args.keyint)
            for a, r in zip(annotations, relatives)]
    results = dict(run_jobs(_cut, jobs, args.workers, "clips"))
    lines, failures = [], []
    for index, annotation in enumerate(annotations):
        count, reason = results[index]
        if count:
            lines.append(f"{relatives[index]} {count} {labels[annotation.label]}\n")
        else:
            failures.append(f"{args.annotations}, line {annotation.line}: {annotation.source}: {reason}\n")
    write_list(args.list, lines)
    write_list(failed_report, failures)
    print(f"{len(lines)} of {len(annotations)} clips listed in {args.list} (paths relative to {args.out}); "
          f"{len(failures)} failed, reported in {failed_report}")


# ---------------------------------------------------------------------------------------------- frames
def prepare_frame_list(args: argparse.Namespace) -> None:
    check_input(args.src, "--src", folder=True)
    check_input(args.labels, "--labels", folder=False)
    check_input(args.classes, "--classes", folder=False)
    check_output_file(args.list, "--list")
    with open(args.classes, "r", encoding="utf-8") as f:
        labels: Dict[str, int] = {line.strip(): i for i, line in enumerate(f) if line.strip()}
    lines = []
    with open(args.labels, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            video, _, name = line.strip().partition(";")
            if name not in labels:
                raise PrepareError(f"{args.labels}, line {number}: class '{name}' is not in {args.classes}")
            folder = os.path.join(args.src, video)
            if not os.path.isdir(folder):
                raise PrepareError(f"{args.labels}, line {number}: frame folder {folder} not found")
            count = len([p for p in os.listdir(folder) if p.endswith(".jpg")])
            if count == 0:
                print(f"warning: {args.labels}, line {number}: frame folder {folder} holds no .jpg frame; "
                      f"left out of the list", file=sys.stderr)
                continue
            lines.append(f"{video} {count} {labels[name]}\n")
    write_list(args.list, lines)
    print(f"{len(lines)} videos listed in {args.list}")
