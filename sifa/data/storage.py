"""Frame storage: FRAME folders, LMDB environments and video files (docs/design.md §7.1).

Readers return the requested 1-based frame ids as RGB uint8 arrays of shape H x W x 3.
Writers create each format; they serve the synthetic data set, the tests and data conversion.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Sequence

import cv2
import lmdb
import numpy as np


class FrameReadError(RuntimeError):
    """A frame that is missing or cannot be decoded."""


def frame_file_name(frame_id: int) -> str:
    """FRAME format: 1-based, 5 digits."""
    return f"{frame_id:05d}.jpg"


def lmdb_key(frame_id: int) -> str:
    """LMDB format: 1-based, 6 digits."""
    return f"{frame_id:06d}.jpg"


def _decode(data: bytes | np.ndarray, video: str, name: str) -> np.ndarray:
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


def read_lmdb(video: str, frame_ids: Sequence[int]) -> List[np.ndarray]:
    if not os.path.isdir(video):
        raise FrameReadError(f"video '{video}': LMDB environment not found")
    # One environment per video, opened per read: worker processes must not share handles.
    env = lmdb.open(video, readonly=True, lock=False, readahead=False, meminit=False)
    try:
        frames = []
        with env.begin(write=False) as txn:
            for frame_id in frame_ids:
                key = lmdb_key(frame_id)
                data = txn.get(key.encode())
                if data is None:
                    raise FrameReadError(f"video '{video}': LMDB key '{key}' not found")
                frames.append(_decode(data, video, key))
        return frames
    finally:
        env.close()


def read_video_file(video: str, frame_ids: Sequence[int]) -> List[np.ndarray]:
    if not os.path.isfile(video):
        raise FrameReadError(f"video '{video}': file not found")
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise FrameReadError(f"video '{video}': OpenCV cannot open it")
    wanted = set(frame_ids)
    decoded: Dict[int, np.ndarray] = {}
    try:
        # Decode sequentially: frame seeking is not exact for every codec.
        frame_id = 0
        while frame_id < max(wanted):
            ok, image = capture.read()
            if not ok:
                break
            frame_id += 1
            if frame_id in wanted:
                decoded[frame_id] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise FrameReadError(f"video '{video}': frame {missing[0]} cannot be decoded "
                             f"(the file yields only {frame_id} frames)")
    return [decoded[i] for i in frame_ids]


def count_video_frames(video: str) -> int:
    """The number of frames OpenCV decodes from a video file; 0 when it cannot read the file."""
    capture = cv2.VideoCapture(video)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


_READERS: Dict[str, Callable[[str, Sequence[int]], List[np.ndarray]]] = {
    "FRAME": read_frame_folder,
    "LMDB": read_lmdb,
    "VIDEO": read_video_file,
}


def make_reader(storage_format: str) -> Callable[[str, Sequence[int]], List[np.ndarray]]:
    try:
        return _READERS[storage_format]
    except KeyError:
        raise ValueError(f"unknown storage format '{storage_format}', expected one of {list(_READERS)}") from None


def _encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
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
