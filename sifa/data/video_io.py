"""Video files: decoding the requested frames once each, reading forward from the nearest seek point.

Two backends decode a file into identical RGB frames (both wrap FFmpeg, and both convert with its
swscale): OpenCV, the default and a core dependency, and PyAV (``video_backend: pyav``, an optional
package whose wheels ship their own FFmpeg). PyAV is there because it reads files OpenCV's wheels
may not: AV1, which YouTube serves for many Kinetics videos, opened in earlier OpenCV wheels but
yielded no frame (opencv-python-headless 5.1 decodes it).

Frame ids count the frames in the order the decoder returns them, as a sequential decode does.
Seeking keeps that numbering: OpenCV maps the id to a timestamp at the stream's frame rate and decodes
forward from the keyframe before it; PyAV looks the id up in the stream's packet timestamps (read
without decoding) and seeks to the keyframe before it. Where a seek cannot be trusted (the stream's
frame count or timestamps are wrong, the file is cut short) the read starts again without seeking.
Each backend's package is imported where that backend is used, so that ``import sifa.data`` needs neither.
"""
from __future__ import annotations

import bisect
import os
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError

VIDEO_BACKENDS = ("opencv", "pyav")
# OpenCV cannot say where keyframes are: it seeks when the next wanted frame lies further ahead than
# this, as decoding forward from a keyframe costs on average half a GOP (25-125 frames for
# 1-5 s GOPs at 25 fps) plus the 16 frames OpenCV's seek starts before its target.
OPENCV_SEEK_GAP = 64
# PyAV knows the keyframes: it seeks when one lies further ahead than this (a seek restarts the
# decoder's frame threads, which costs about as much as decoding a few frames).
PYAV_SEEK_GAP = 8


class FrameReadError(UserError, RuntimeError):
    """A frame that is missing or cannot be decoded."""


class VideoEndedError(FrameReadError):
    """The video yields fewer frames than asked for: ``decodable`` frames decode."""

    def __init__(self, video: str, frame_id: int, decodable: int):
        super().__init__(f"video '{video}': frame {frame_id} cannot be decoded (the file yields only "
                         f"{decodable} frames)")
        self.decodable = decodable


class _UnreliableSeek(Exception):
    """A seek that did not land where it should have: the read starts again without seeking."""


def check_backend(backend: str) -> str:
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend '{backend}', expected one of {list(VIDEO_BACKENDS)}")
    return backend


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError("video_backend 'pyav' needs the PyAV package: pip install av "
                          "(or pip install -r requirements-extra.txt)") from None
    return av


class _OpenCVStream:
    """The frames of a video file through cv2.VideoCapture; ``position`` is the id of the next frame - 1."""

    def __init__(self, video: str):
        import cv2

        self.video = video
        self.capture = cv2.VideoCapture(video)
        if not self.capture.isOpened():
            raise FrameReadError(f"video '{video}': OpenCV cannot open it")
        self.position = 0
        self.fps = self.capture.get(cv2.CAP_PROP_FPS)

    def close(self) -> None:
        self.capture.release()

    def skip_to(self, index: int) -> None:
        """Seek so that the next grab returns frame ``index`` (0-based) when that saves decoding."""
        if index - self.position <= OPENCV_SEEK_GAP:
            return
        import cv2

        self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        # OpenCV clamps the target to the stream's stated frame count and stops early in a cut-short
        # file; either leaves it elsewhere.
        if int(self.capture.get(cv2.CAP_PROP_POS_FRAMES)) != index:
            raise _UnreliableSeek
        self.position = index

    def grab(self) -> bool:
        if not self.capture.grab():
            return False
        self.position += 1
        return True

    def retrieve(self) -> np.ndarray:
        import cv2

        ok, image = self.capture.retrieve()
        if not ok:
            raise FrameReadError(f"video '{self.video}': frame {self.position} cannot be decoded")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def timestamp(self) -> float:
        """Seconds from the stream's start to the frame last grabbed."""
        import cv2

        return self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0


class _PyAVStream:
    """The frames of a video file through PyAV; the same interface as :class:`_OpenCVStream`."""

    def __init__(self, video: str):
        av = _import_av()
        self.video = video
        try:
            self.container = av.open(video)
        except av.FFmpegError as err:
            raise FrameReadError(f"video '{video}': PyAV cannot open it ({err})") from None
        if not self.container.streams.video:
            self.container.close()
            raise FrameReadError(f"video '{video}': the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._decode_error = av.FFmpegError
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.position = 0
        self._frame = None
        self._frames = self._decoded_frames()
        self._index: Optional[Tuple[List[int], List[int]]] = None
        self._frame_index: Optional[Dict[int, int]] = None  # timestamp -> frame index, once seeking

    def close(self) -> None:
        self._frames.close()
        self.container.close()

    def _decoded_frames(self) -> Iterator:
        try:
            yield from self.container.decode(self.stream)
        except self._decode_error:
            return  # a damaged tail ends the stream as a short file does

    def _packet_index(self) -> Tuple[List[int], List[int]]:
        """(timestamps of the frames in display order, indices of the keyframes), from the packets alone."""
        if self._index is None:
            container = _import_av().open(self.video)
            try:
                packets = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0])
                           if p.size]
            finally:
                container.close()
            if any(pts is None for pts, _ in packets):
                self._index = [], []  # no timestamps: no seeking
            else:
                packets.sort()
                self._index = ([pts for pts, _ in packets],
                               [i for i, (_, keyframe) in enumerate(packets) if keyframe])
        return self._index

    def skip_to(self, index: int) -> None:
        timestamps, keyframes = self._packet_index()
        nearest = bisect.bisect_right(keyframes, index) - 1
        if nearest < 0 or keyframes[nearest] <= self.position + PYAV_SEEK_GAP:
            return  # decoding on from here costs about as much as seeking
        keyframe = keyframes[nearest]
        self.container.seek(timestamps[keyframe], stream=self.stream, backward=True)
        self._frames.close()
        self._frames = self._decoded_frames()
        self.position = keyframe
        if self._frame_index is None:
            self._frame_index = {pts: i for i, pts in enumerate(timestamps)}

    def grab(self) -> bool:
        frame = next(self._frames, None)
        if self._frame_index is not None:
            # After a seek the decoder may first return frames shown before the keyframe (open GOPs).
            while frame is not None and self._frame_index.get(frame.pts, -1) < self.position:
                if frame.pts not in self._frame_index:
                    raise _UnreliableSeek
                frame = next(self._frames, None)
            if frame is not None and self._frame_index[frame.pts] != self.position:
                raise _UnreliableSeek
        if frame is None:
            return False
        self._frame = frame
        self.position += 1
        return True

    def retrieve(self) -> np.ndarray:
        return self._frame.to_ndarray(format="rgb24")

    def timestamp(self) -> float:
        start = self.stream.start_time or 0
        return float((self._frame.pts - start) * self.stream.time_base)


def open_video(video: str, backend: str = "opencv"):
    """A stream over the frames of ``video``: ``grab()``, ``retrieve()`` (RGB), ``timestamp()``,
    ``skip_to(index)``, ``fps``, ``position``, ``close()``."""
    if not os.path.isfile(video):
        raise FrameReadError(f"video '{video}': file not found")
    return (_PyAVStream if check_backend(backend) == "pyav" else _OpenCVStream)(video)


class VideoWriter:
    """Encodes RGB frames of one size into an .mp4 file: H.264 (libx264, CRF 18) through PyAV, MPEG-4
    Part 2 through OpenCV, whose wheels encode no H.264. Width and height must be even (4:2:0 chroma).
    ``keyframe_interval`` (PyAV only) sets the GOP length."""

    def __init__(self, path: str, fps: float, width: int, height: int, backend: str = "opencv",
                 keyframe_interval: Optional[int] = None):
        if width % 2 or height % 2:
            raise ValueError(f"'{path}': video width and height must be even, got {width}x{height}")
        self.path = path
        self._writer = self._container = None
        if check_backend(backend) == "pyav":
            av = _import_av()
            self._container = av.open(path, "w")
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                                      options={"crf": "18"})
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            if keyframe_interval:
                self._stream.codec_context.gop_size = keyframe_interval
            self._frame_type = av.VideoFrame
        else:
            if keyframe_interval:
                raise ValueError("OpenCV's video writer cannot set the keyframe interval: use backend 'pyav'")
            import cv2

            self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write '{path}'")

    def write(self, frame: np.ndarray) -> None:
        if self._writer is not None:
            import cv2

            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        else:
            self._container.mux(self._stream.encode(self._frame_type.from_ndarray(frame, format="rgb24")))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        else:
            self._container.mux(self._stream.encode())  # the frames the encoder still holds
            self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_indices(video: str, indices: Sequence[int], backend: str, seek: bool) -> Dict[int, np.ndarray]:
    """Frames at sorted 0-based ``indices``; VideoEndedError when the stream ends before one."""
    stream = open_video(video, backend)
    frames: Dict[int, np.ndarray] = {}
    try:
        for index in indices:
            if seek:
                stream.skip_to(index)
            while stream.position <= index:
                if not stream.grab():
                    raise VideoEndedError(video, index + 1, stream.position)
            frames[index] = stream.retrieve()
    finally:
        stream.close()
    return frames


def read_video_frames(video: str, frame_ids: Sequence[int], backend: str = "opencv") -> List[np.ndarray]:
    """RGB frames for 1-based ``frame_ids`` (any order, repeats allowed), each decoded once.

    Raises VideoEndedError, with the number of frames that do decode, when the file yields fewer
    frames than the largest id.
    """
    indices = sorted({frame_id - 1 for frame_id in frame_ids})
    try:
        frames = _read_indices(video, indices, backend, seek=True)
    except (_UnreliableSeek, VideoEndedError):
        # A stream may end early because a seek went wrong: only a sequential read can tell.
        frames = _read_indices(video, indices, backend, seek=False)
    return [frames[frame_id - 1] for frame_id in frame_ids]


def _read_time_range(video: str, start: float, end: float, backend: str, seek: bool) -> Tuple[List[np.ndarray],
                                                                                         float]:
    stream = open_video(video, backend)
    try:
        if seek:  # from a frame before start: the rate is nominal, the timestamps decide
            stream.skip_to(max(0, int(start * stream.fps) - 1))
        frames = []
        while stream.grab() and stream.timestamp() < end:
            if stream.timestamp() >= start:
                frames.append(stream.retrieve())
        return frames, stream.fps
    finally:
        stream.close()


def read_time_range(video: str, start: float, end: float, backend: str = "opencv") -> Tuple[List[np.ndarray], float]:
    """(RGB frames shown from ``start`` to before ``end`` seconds, the stream's frame rate), read
    forward from the seek point before ``start``."""
    try:
        return _read_time_range(video, start, end, backend, seek=True)
    except _UnreliableSeek:
        return _read_time_range(video, start, end, backend, seek=False)


def decode_all(video: str, backend: str = "opencv") -> Iterator[np.ndarray]:
    """Every frame of ``video`` in order, RGB."""
    stream = open_video(video, backend)
    try:
        while stream.grab():
            yield stream.retrieve()
    finally:
        stream.close()

