"""Classes of videos, scored as the evaluation scores them: one video, many, or a long one window by window.

    python -m sifa.tools.predict --config_file X.yml --checkpoint ckpt.pth --input PATH [--out results.json]
    python -m sifa.tools.predict ... --input FOLDER_OF_VIDEOS | --list LIST_FILE [--root DIR] --out results.csv
    python -m sifa.tools.predict ... --input long.mp4 --window 2 --stride 1 [--annotate annotated.mp4]

PATH is a video file (decoded by the config's video_backend, OpenCV by default), a FRAME folder
(00001.jpg, ...) or an LMDB environment (a folder holding data.mdb); a folder that is neither holds
such inputs, each predicted. A list file names one input per line (its first field; other fields,
e.g. the frame count and label of a training list, are ignored), relative to --root (default: the
list file's folder). Each video is cut into the configured test views (eva_num_clips clips x
eva_num_crop crops of eva_crop_size, eva_num_segments segments) by the evaluation's own dataset and
transforms, and the softmax scores are averaged over the views and over both heads of a SIFA-Net,
as `--eval_only` does (sifa.apis does the work). With --window, each window of that many seconds,
every --stride seconds, is scored as a video of its own. --out writes the results as JSON or CSV
(by its extension). Class names come from --class_names or the config's class_name_file; without
one, label indices are shown.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from ..apis import inference_recognizer, inference_windows, init_recognizer
from ..apis.inference import frame_rate, frame_source
from ..checkpoint_file import atomic_write_text
from ..data.storage import frame_file_name
from ..data.video_io import VideoWriter, decode_all
from ..errors import InputError, UserError, exit_on_user_error
from ..user_files import check_output_file

TOP_K = 5
Result = Dict[str, object]


def is_one_video(path: str) -> bool:
    """A video file, FRAME folder or LMDB environment, rather than a folder of them."""
    return (not os.path.isdir(path) or os.path.isfile(os.path.join(path, "data.mdb"))
            or os.path.isfile(os.path.join(path, frame_file_name(1))))


def inputs_of(path: Optional[str], list_file: Optional[str], root: Optional[str]) -> List[str]:
    """The videos to predict: ``path`` itself, the entries of a folder of videos, or the lines of ``list_file``."""
    if list_file is not None:
        if not os.path.isfile(list_file):
            raise InputError(f"list file not found: {list_file}")
        root = os.path.dirname(list_file) if root is None else root
        with open(list_file, encoding="utf-8") as f:
            paths = [os.path.join(root, line.split()[0]) for line in f if line.strip()]
        if not paths:
            raise InputError(f"list file {list_file} names no input")
        return paths
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if is_one_video(path):
        return [path]
    paths = sorted(os.path.join(path, name) for name in os.listdir(path) if not name.startswith("."))
    if not paths:
        raise InputError(f"input folder {path} is empty: it holds no video, no FRAME folder "
                         f"({frame_file_name(1)}, ...) and no LMDB data.mdb")
    return paths


def predict_each(model: torch.nn.Module, paths: List[str], top_k: int) -> List[Result]:
    """One result per input; of several, an unreadable one is reported in its result (``error``) and skipped."""
    results = []
    for path in paths:
        try:
            results.append({"input": path, "classes": inference_recognizer(model, path, top_k)})
        except UserError as err:
            if len(paths) == 1:
                raise
            print(f"warning: {err}", file=sys.stderr)
            results.append({"input": path, "error": str(err)})
    return results


def frames_of(video: str, cfg) -> Iterator[np.ndarray]:
    """Every frame of ``video`` in order: a file decoded sequentially, a folder or environment frame by frame."""
    if os.path.isfile(video):
        yield from decode_all(video, cfg.video_backend)
        return
    _, _, num_frames, read = frame_source(video, cfg)
    for frame_id in range(1, num_frames + 1):
        yield read([frame_id])[0]


def write_annotated(video: str, windows: List[Result], fps: float, cfg, out: str) -> int:
    """A copy of ``video`` at ``fps`` with, on each frame, the top class of the latest window that covers it
    (frames no window covers are copied plain). Returns the number of frames written."""
    import cv2

    writer = None
    count = 0
    try:
        for index, frame in enumerate(frames_of(video, cfg)):
            covering = [w for w in windows if w["first_frame"] <= index < w["first_frame"] + w["num_frames"]]
            # H.264/MPEG-4 4:2:0 needs even sides: an odd last row or column is dropped.
            frame = np.ascontiguousarray(frame[:frame.shape[0] // 2 * 2, :frame.shape[1] // 2 * 2])
            if covering:
                window = covering[-1]
                best = window["classes"][0]
                text = f"{best['name']} {best['probability']:.2f} ({window['start']:.1f}-{window['end']:.1f}s)"
                scale = max(frame.shape[0] / 480, 0.35)
                cv2.putText(frame, text, (4, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                            (0, 0, 0), max(int(3 * scale), 2), cv2.LINE_AA)
                cv2.putText(frame, text, (4, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                            (255, 255, 255), max(int(scale), 1), cv2.LINE_AA)
            if writer is None:
                writer = VideoWriter(out, fps, frame.shape[1], frame.shape[0], cfg.video_backend)
            writer.write(frame)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return count


def _csv_rows(results: List[Result], top_k: int) -> List[List[object]]:
    windowed = any("windows" in r for r in results)
    header = ["input"] + (["start", "end"] if windowed else [])
    header += [f"{field}_{rank}" for rank in range(1, top_k + 1) for field in ("label", "name", "probability")]
    rows = [header + ["error"]]
    for result in results:
        entries = result["windows"] if windowed else [result]
        for entry in entries:
            row = [result["input"]] + ([entry["start"], entry["end"]] if windowed else [])
            for rank in range(top_k):
                classes = entry.get("classes", [])
                row += [classes[rank]["label"], classes[rank]["name"], classes[rank]["probability"]] \
                    if rank < len(classes) else ["", "", ""]
            rows.append(row + [result.get("error", "")])
    return rows


def write_results(results: List[Result], out: str, top_k: int) -> None:
    """JSON (the results as returned) or CSV (one row per input, or per window, with its top_k classes)."""
    extension = os.path.splitext(out)[1].lower()
    if extension == ".json":
        atomic_write_text(out, json.dumps(results, indent=2))
    elif extension == ".csv":
        text = io.StringIO()
        csv.writer(text).writerows(_csv_rows(results, top_k))
        atomic_write_text(out, text.getvalue())
    else:
        raise InputError(f"--out must end in .json or .csv, got {out}")


def main(argv: Optional[List[str]] = None) -> List[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True, help="experiment YAML the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or weights-only file")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", help="video file, FRAME folder or LMDB environment, or a folder of them")
    inputs.add_argument("--list", dest="list_file", help="file naming one input per line (first field)")
    parser.add_argument("--root", default=None, help="folder the --list paths are relative to (default: its folder)")
    parser.add_argument("--out", default=None, help="write the results to this .json or .csv file")
    parser.add_argument("--top_k", type=int, default=TOP_K, help="classes shown and written per video or window")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="score windows of this length instead of the whole video")
    parser.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                        help="with --window: seconds between window starts (default: the window, no overlap)")
    parser.add_argument("--fps", type=float, default=None,
                        help="with --window: frame rate of FRAME folders and LMDB environments (default: a file's own)")
    parser.add_argument("--annotate", default=None, metavar="VIDEO.mp4",
                        help="with --window and one input: write a copy of the video with each window's top class")
    parser.add_argument("--class_names", default=None,
                        help="class-name file (one per line, line i = label i); overrides class_name_file")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. eva_num_clips=1 eva_num_crop=1")
    args = parser.parse_args(argv)
    if args.window is None and (args.stride is not None or args.annotate or args.fps is not None):
        parser.error("--stride, --fps and --annotate need --window")
    if args.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {args.top_k}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with exit_on_user_error():
        paths = inputs_of(args.input, args.list_file, args.root)
        for option, path in (("--out", args.out), ("--annotate", args.annotate)):
            if path:
                check_output_file(path, option)
        if args.annotate and len(paths) != 1:
            raise InputError(f"--annotate takes one input video, got {len(paths)}")
        model = init_recognizer(args.config_file, args.checkpoint, device, args.opts, args.class_names)
        cfg = model.cfg
        if args.window is None:
            results = predict_each(model, paths, args.top_k)
        else:
            stride = args.window if args.stride is None else args.stride
            results = [{"input": path, "fps": frame_rate(path, cfg, args.fps), "window": args.window,
                        "stride": stride} for path in paths]
            for result in results:
                result["windows"] = inference_windows(model, result["input"], args.window, stride, result["fps"],
                                                      args.top_k)
        if args.out:
            write_results(results, args.out, args.top_k)
        if args.annotate:
            count = write_annotated(paths[0], results[0]["windows"], results[0]["fps"], cfg, args.annotate)
    print(f"{len(paths)} input(s), each {cfg.eva_num_clips * cfg.eva_num_crop} view(s) ({cfg.eva_num_clips} clip(s) "
          f"x {cfg.eva_num_crop} crop(s) at {cfg.eva_crop_size}px) of {cfg.net_name}")
    for result in results:
        if "error" in result:
            print(f"{result['input']}: error: {result['error']}")
        elif "windows" in result:
            print(f"{result['input']}: {len(result['windows'])} window(s) of {result['window']}s every "
                  f"{result['stride']}s at {result['fps']:g} fps")
            for window in result["windows"]:
                best = window["classes"][0]
                print(f"  {window['start']:8.2f}-{window['end']:8.2f}s  {best['name']:<40} {best['probability']:.4f}")
        else:
            print(f"{result['input']}:")
            for rank, entry in enumerate(result["classes"], start=1):
                print(f"{rank}. {entry['name']:<40} {entry['probability']:.4f}")
    if args.out:
        print(f"wrote {args.out}")
    if args.annotate:
        print(f"wrote {args.annotate} ({count} frames)")
    return results


if __name__ == "__main__":
    main()
