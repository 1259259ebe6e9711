"""Video files: decoding the requested frames once each, reading forward from the nearest seek point.

Three backends decode a file into RGB frames (all wrap FFmpeg): OpenCV, the default and a core
dependency, PyAV (``video_backend: pyav``, an optional package whose wheels ship their own FFmpeg) and
torchcodec (``video_backend: torchcodec``, PyTorch's decoder, which needs FFmpeg's shared libraries on
the system). OpenCV and PyAV give identical frames (both convert with FFmpeg's swscale). PyAV is there
because it reads files OpenCV's wheels may not: AV1, which YouTube serves for many Kinetics videos,
opened in earlier OpenCV wheels but yielded no frame (opencv-python-headless 5.1 decodes it). In a
DataLoader worker each decoder uses one thread (the workers already share the cores).

Frame ids count the frames in the order the decoder returns them, as a sequential decode does.
Seeking keeps that numbering: OpenCV maps the id to a timestamp at the stream's frame rate and decodes
forward from the keyframe before it; PyAV looks the id up in the stream's packet timestamps (read
without decoding, once per file and process) and seeks to the keyframe before it; torchcodec does
the same itself. Where a seek cannot be trusted (the stream's frame count or timestamps are wrong, the
file is cut short) the read starts again without seeking. Each backend's package is imported where
that backend is used, so that ``import sifa.data`` needs none of them.
"""
from __future__ import annotations

import functools
import os
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError

VIDEO_BACKENDS = ("opencv", "pyav", "torchcodec")
WRITER_BACKENDS = ("opencv", "pyav")  # the backends that also encode (VideoWriter)
# OpenCV cannot say where keyframes are: it seeks when the next wanted frame lies further ahead than
# this, as decoding forward from a keyframe costs on average half a GOP (25-125 frames for
# 1-5 s GOPs at 25 fps) plus the 16 frames OpenCV's seek starts before its target.
OPENCV_SEEK_GAP = 64
# PyAV knows the keyframes: it seeks when one lies further ahead than this (a seek restarts the
# decoder's frame threads, which costs about as much as decoding a few frames).
PYAV_SEEK_GAP = 8
# Keyframe indices each process keeps (a few kB per file: a DataLoader worker's share of Kinetics-400).
KEYFRAME_INDEX_CACHE = 65536


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


def _import_torchcodec():
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        raise ImportError("video_backend 'torchcodec' needs the torchcodec package and FFmpeg's shared libraries "
                          "(4 to 8): pip install torchcodec; apt install ffmpeg (docs/training.md)") from None
    except RuntimeError as err:  # torchcodec found no FFmpeg libraries it can load
        raise ImportError(f"video_backend 'torchcodec': {str(err).splitlines()[0]}") from None
    return VideoDecoder


def backend_available(backend: str) -> bool:
    """Whether ``backend``'s package (and, for torchcodec, FFmpeg's libraries) loads here."""
    importers = {"opencv": lambda: __import__("cv2"), "pyav": _import_av, "torchcodec": _import_torchcodec}
    try:
        importers[check_backend(backend)]()
    except ImportError:
        return False
    return True


def _decoder_threads() -> int:
    """Decoder threads: 1 in a DataLoader worker (the workers already use every core; more threads only
    contend), else 0: FFmpeg's choice (about one per core)."""
    from torch.utils.data import get_worker_info

    return 1 if get_worker_info() is not None else 0


class _OpenCVStream:
    """The frames of a video file through cv2.VideoCapture; ``position`` is the id of the next frame - 1."""

    def __init__(self, video: str):
        import cv2

        self.video = video
        threads = _decoder_threads()
        self.capture = cv2.VideoCapture(video, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads] if threads else [])
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


@functools.lru_cache(maxsize=KEYFRAME_INDEX_CACHE)
def _keyframe_index(video: str, size: int, mtime_ns: int) -> Tuple[np.ndarray, np.ndarray]:
    """(timestamps of the frames in display order, indices of the keyframes) of ``video``, from its packets
    alone (no decoding); both empty when a packet has no timestamp (then no seeking). Cached per process
    (each DataLoader worker) under the file's size and modification time, so that a file read again is
    not demuxed again."""
    container = _import_av().open(video)
    try:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    finally:
        container.close()
    if not packets or any(pts is None for pts, _ in packets):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    packets.sort()
    return (np.array([pts for pts, _ in packets], np.int64),
            np.array([i for i, (_, keyframe) in enumerate(packets) if keyframe], np.int64))


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
        threads = _decoder_threads()
        self.stream.thread_type = "AUTO" if threads != 1 else "NONE"
        self.stream.thread_count = threads
        self._decode_error = av.FFmpegError
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.position = 0
        self._frame = None
        self._frames = self._decoded_frames()
        self._timestamps: Optional[np.ndarray] = None  # of the frames in display order, once seeking

    def close(self) -> None:
        self._frames.close()
        self.container.close()

    def _decoded_frames(self) -> Iterator:
        try:
            yield from self.container.decode(self.stream)
        except self._decode_error:
            return  # a damaged tail ends the stream as a short file does

    def _frame_id(self, pts: Optional[int]) -> int:
        """The display index of the frame with timestamp ``pts``; -1 if no packet has it."""
        i = int(np.searchsorted(self._timestamps, pts)) if pts is not None else len(self._timestamps)
        return i if i < len(self._timestamps) and self._timestamps[i] == pts else -1

    def skip_to(self, index: int) -> None:
        stat = os.stat(self.video)
        timestamps, keyframes = _keyframe_index(os.path.abspath(self.video), stat.st_size, stat.st_mtime_ns)
        nearest = int(np.searchsorted(keyframes, index, side="right")) - 1
        if nearest < 0 or keyframes[nearest] <= self.position + PYAV_SEEK_GAP:
            return  # decoding on from here costs about as much as seeking
        keyframe = int(keyframes[nearest])
        self.container.seek(int(timestamps[keyframe]), stream=self.stream, backward=True)
        self._frames.close()
        self._frames = self._decoded_frames()
        self.position = keyframe
        self._timestamps = timestamps

    def grab(self) -> bool:
        frame = next(self._frames, None)
        if self._timestamps is not None:
            # After a seek the decoder may first return frames shown before the keyframe (open GOPs).
            while frame is not None and self._frame_id(frame.pts) < self.position:
                if self._frame_id(frame.pts) < 0:
                    raise _UnreliableSeek
                frame = next(self._frames, None)
            if frame is not None and self._frame_id(frame.pts) != self.position:
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


class _TorchCodecStream:
    """The frames of a video file through torchcodec (PyTorch's decoder); the same interface as
    :class:`_OpenCVStream`. Its exact seek mode indexes the packets when the file is opened (as
    :func:`_keyframe_index` does) and decodes a wanted frame from the keyframe before it, or on from the
    last frame decoded when that is nearer."""

    def __init__(self, video: str):
        decoder_class = _import_torchcodec()
        self.video = video
        try:
            self.decoder = decoder_class(video, dimension_order="NHWC", seek_mode="exact",
                                         num_ffmpeg_threads=_decoder_threads())
        except (RuntimeError, ValueError) as err:
            raise FrameReadError(f"video '{video}': torchcodec cannot open it ({str(err).splitlines()[0]})") from None
        self.fps = float(self.decoder.metadata.average_fps or 0.0)
        self.position = 0
        self._frame = None

    def close(self) -> None:
        self.decoder = None

    def skip_to(self, index: int) -> None:
        self.position = index  # torchcodec seeks only where that saves decoding

    def grab(self) -> bool:
        if self.position >= len(self.decoder):
            return False
        try:
            self._frame = self.decoder.get_frame_at(self.position)
        except RuntimeError:
            return False  # a damaged tail ends the stream as a short file does
        self.position += 1
        return True

    def retrieve(self) -> np.ndarray:
        return self._frame.data.numpy()

    def timestamp(self) -> float:
        return float(self._frame.pts_seconds)


_STREAMS = {"opencv": _OpenCVStream, "pyav": _PyAVStream, "torchcodec": _TorchCodecStream}


def open_video(video: str, backend: str = "opencv"):
    """A stream over the frames of ``video``: ``grab()``, ``retrieve()`` (RGB), ``timestamp()``,
    ``skip_to(index)``, ``fps``, ``position``, ``close()``."""
    if not os.path.isfile(video):
        raise FrameReadError(f"video '{video}': file not found")
    return _STREAMS[check_backend(backend)](video)


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
        if backend not in WRITER_BACKENDS:
            raise ValueError(f"video backend '{backend}' cannot write videos, expected one of {list(WRITER_BACKENDS)}")
        if backend == "pyav":
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

