"""Frame storage: FRAME folders, LMDB environments and video files (docs/design.md §7.1).

Readers return the requested 1-based frame ids as RGB uint8 arrays of shape H x W x 3.
Writers create each format; they serve the synthetic data set, the tests and data conversion.
`storage_of` tells which format a path holds, and its number of frames (a tool's single input).
OpenCV and lmdb are imported by the functions that use them, so that ``import sifa.data`` needs neither.
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .video_io import FrameReadError, check_backend, open_video, read_video_frames

if TYPE_CHECKING:
    import lmdb


def frame_file_name(frame_id: int) -> str:
    """FRAME format: 1-based, 5 digits."""
    return f"{frame_id:05d}.jpg"


def lmdb_key(frame_id: int) -> str:
    """LMDB format: 1-based, 6 digits."""
    return f"{frame_id:06d}.jpg"


def _decode(data: bytes | np.ndarray, video: str, name: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if len(data) else None
    if image is None:
        raise FrameReadError(f"video '{video}': cannot decode image '{name}'")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_frame_folder(video: str, frame_ids: Sequence[int]) -> List[np.ndarray]:
    frames = []
    for frame_id in frame_ids:
        name = frame_file_name(frame_id)
        try:
            with open(os.path.join(video, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FrameReadError(f"video '{video}': frame file '{name}' not found") from None
        frames.append(_decode(data, video, name))
    return frames


def open_lmdb(video: str) -> lmdb.Environment:
    """The LMDB environment of a video, read-only. A FrameReadError names the video when it cannot be used: lmdb's
    own errors (an empty or foreign data.mdb), or a data.mdb shorter than the pages its header counts (cut short),
    which lmdb would map all the same: the first read past its end would kill the process with SIGBUS."""
    import lmdb

    try:
        env = lmdb.open(video, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as err:
        raise FrameReadError(f"video '{video}': not a readable LMDB environment ({err})") from None
    # The header pages are read, not mapped; the rest is only mapped.
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(video, "data.mdb"))
    if size < needed:
        env.close()
        raise FrameReadError(f"video '{video}': data.mdb is cut short: {size} bytes, its header counts {needed}")
    return env


def read_lmdb(video: str, frame_ids: Sequence[int]) -> List[np.ndarray]:
    if not os.path.isdir(video):
        raise FrameReadError(f"video '{video}': LMDB environment not found")
    import lmdb

    # One environment per video, opened per read: worker processes must not share handles.
    env = open_lmdb(video)
    try:
        frames = []
        with env.begin(write=False) as txn:
            for frame_id in frame_ids:
                key = lmdb_key(frame_id)
                try:
                    data = txn.get(key.encode())
                except lmdb.Error as err:  # damaged pages
                    raise FrameReadError(f"video '{video}': LMDB key '{key}' cannot be read ({err})") from None
                if data is None:
                    raise FrameReadError(f"video '{video}': LMDB key '{key}' not found")
                frames.append(_decode(data, video, key))
        return frames
    finally:
        env.close()


def count_video_frames(video: str, backend: str = "opencv") -> int:
    """The number of frames that decode from a video file (not the count it states); 0 when it cannot
    be read."""
    try:
        stream = open_video(video, backend)
    except FrameReadError:
        return 0
    try:
        while stream.grab():
            pass
        return stream.position
    finally:
        stream.close()


_READERS: Dict[str, Callable[..., List[np.ndarray]]] = {
    "FRAME": read_frame_folder,
    "LMDB": read_lmdb,
    "VIDEO": read_video_frames,
}


def make_reader(storage_format: str, video_backend: str = "opencv") -> Callable[[str, Sequence[int]], List[np.ndarray]]:
    """``read(video, frame_ids)`` for a storage format; VIDEO files decode with ``video_backend``."""
    try:
        reader = _READERS[storage_format]
    except KeyError:
        raise ValueError(f"unknown storage format '{storage_format}', expected one of {list(_READERS)}") from None
    return functools.partial(reader, backend=check_backend(video_backend)) if storage_format == "VIDEO" else reader


def _encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def write_frame_folder(video: str, frames: Sequence[np.ndarray], quality: int = 95) -> None:
    os.makedirs(video, exist_ok=True)
    for index, frame in enumerate(frames, start=1):
        with open(os.path.join(video, frame_file_name(index)), "wb") as f:
            f.write(_encode_jpeg(frame, quality))


def write_lmdb(video: str, frames: Sequence[np.ndarray], quality: int = 95) -> None:
    import lmdb

    size = sum(frame.nbytes for frame in frames) * 2 + (1 << 20)
    env = lmdb.open(video, map_size=size)
    try:
        with env.begin(write=True) as txn:
            for index, frame in enumerate(frames, start=1):
                txn.put(lmdb_key(index).encode(), _encode_jpeg(frame, quality))
    finally:
        env.close()


def write_video_file(video: str, frames: Sequence[np.ndarray], fps: float = 25.0) -> None:
    """MJPEG in AVI at the highest quality: supported by every OpenCV build, close to lossless."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write '{video}'")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


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
        try:
            env = open_lmdb(path)
        except FrameReadError as err:
            raise InputError(f"cannot read input: {err}") from None
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
