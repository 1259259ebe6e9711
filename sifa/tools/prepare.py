r"""Prepare data sets for training: cut clips from annotated videos, decode videos into FRAME folders or
LMDB environments, write list files.

Full videos with `(video, start, end, label)` annotations, e.g. Kinetics' CSV files
(`label,youtube_id,time_start,time_end,split`, sources `<src>/<youtube_id>.mp4`) or a plain
`path,start,end,label` CSV (paths relative to `--src`): cut each clip into `<out>/<label>/` as an .mp4
(Kinetics labels with `_` for spaces, as the original's class folders), optionally with the shorter
side resized, and list the clips:

    python -m sifa.tools.prepare trim --annotations kinetics400/train.csv --src data/k400/raw \
        --out data/k400/train --list data/k400/train_list.txt --classes data_lists/kinetics400_classes.txt \
        --short_side 320 --skip_existing

Class folders of video files (`<src>/<class name>/<video>.mp4`), e.g. clips cut as above:

    python -m sifa.tools.prepare videos --src data/k400/videos/train --out data/k400/train_lmdb \
        --format LMDB --list data/k400/train_list.txt --classes data/k400/classes.txt --short_side 256

`--keyint N` (with `--video_backend pyav`, H.264) writes a keyframe every N frames: a training clip
then decodes from at most N frames before it (x264's default is 250; docs/training.md has the speed).

`--format VIDEO` without `--out` converts nothing: it lists the files where they are, relative to
`--src`, which is then the `root_path` to train with. With `--out` it re-encodes them there (as .mp4,
with `--short_side` and `--keyint` as `trim` takes them). `--classes` is read when it exists (so
validation uses the training labels) and written otherwise. Every command checks the files it will
write before it decodes anything.

Something-Something V1 frame folders (`<src>/<id>/00001.jpg`) with a `<id>;<class name>` CSV:

    python -m sifa.tools.prepare frames --src data/ssv1/frames --labels something-something-v1-train.csv \
        --classes something-something-v1-labels.csv --list data/ssv1/train_list.txt
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from ..data.prepare import PrepareError, prepare_frame_list, prepare_videos, trim_videos
from ..data.video_io import WRITER_BACKENDS
from ..errors import exit_on_user_error


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    workers = {"type": int, "default": os.cpu_count(), "help": "worker processes"}
    backend = {"choices": WRITER_BACKENDS, "default": "opencv",
               "help": "decoder (and for the videos written, encoder: opencv writes MPEG-4 Part 2, "
                       "pyav H.264)"}
    trim = commands.add_parser("trim", help="cut annotated clips out of full videos")
    trim.add_argument("--annotations", required=True, help="Kinetics CSV or plain path,start,end,label CSV")
    trim.add_argument("--src", required=True, help="folder of the full videos")
    trim.add_argument("--out", required=True, help="output root: clips go to <out>/<label>/<name>.mp4")
    trim.add_argument("--list", required=True, help="list file to write (paths relative to --out)")
    trim.add_argument("--classes", required=True, help="class-name file: read if present, else written")
    trim.add_argument("--short_side", type=int, default=None, help="resize frames to this shorter side")
    trim.add_argument("--skip_existing", action="store_true", help="keep clips already cut (and list them)")
    trim.add_argument("--failed", default=None, help="report of the clips that failed (default: <list>_failed.txt)")
    keyint = {"type": int, "default": None, "help": "keyframe interval of the videos written (needs --video_backend "
                                                    "pyav; default: x264's, 250)"}
    trim.add_argument("--keyint", **keyint)
    trim.add_argument("--video_backend", **backend)
    trim.add_argument("--workers", **workers)
    videos = commands.add_parser("videos", help="class folders of video files")
    videos.add_argument("--src", required=True)
    videos.add_argument("--out", default=None, help="output root (FRAME / LMDB; VIDEO: re-encoded copies)")
    videos.add_argument("--format", choices=["FRAME", "LMDB", "VIDEO"], required=True)
    videos.add_argument("--list", required=True, help="list file to write")
    videos.add_argument("--classes", required=True, help="class-name file: read if present, else written")
    videos.add_argument("--short_side", type=int, default=None, help="resize frames to this shorter side")
    videos.add_argument("--keyint", **keyint)
    videos.add_argument("--video_backend", **backend)
    videos.add_argument("--workers", **workers)
    frames = commands.add_parser("frames", help="existing frame folders with an '<id>;<class>' CSV")
    frames.add_argument("--src", required=True)
    frames.add_argument("--labels", required=True)
    frames.add_argument("--classes", required=True, help="class names, one per line")
    frames.add_argument("--list", required=True)
    args = parser.parse_args(argv)
    if args.command == "videos":
        if args.format == "VIDEO" and not args.out and (args.short_side or args.keyint):
            parser.error("--format VIDEO without --out lists the files in --src as they are: --short_side and "
                         "--keyint need --out, where the videos are re-encoded")
        if args.format != "VIDEO" and not args.out:
            parser.error("--out is needed for FRAME and LMDB")
        if args.format != "VIDEO" and args.keyint:
            parser.error("--keyint applies to videos written (trim, videos --format VIDEO --out), not to "
                         f"{args.format}")
    if args.command in ("trim", "videos") and args.keyint is not None:
        if args.keyint < 1:
            parser.error(f"--keyint must be at least 1, got {args.keyint}")
        if args.video_backend != "pyav":
            parser.error("--keyint needs --video_backend pyav: OpenCV's video writer cannot set the keyframe "
                         "interval")
    command = {"trim": trim_videos, "videos": prepare_videos, "frames": prepare_frame_list}[args.command]
    with exit_on_user_error():
        try:
            command(args)
        except OSError as err:  # reading the sources or writing the outputs: the message names the file
            raise PrepareError(str(err)) from err


if __name__ == "__main__":
    main()
