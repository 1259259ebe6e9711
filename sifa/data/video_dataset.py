"""The video Dataset: list file + storage format + clip sampling + clip transforms."""
from __future__ import annotations

import os
import warnings
from itertools import chain
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .list_file import VideoRecord, read_list_file
from .sampling import ClipTooShortError, check_clip_fits, clip_frame_ids, eval_offsets, train_offsets
from .storage import frame_file_name, make_reader
from .video_io import FrameReadError, VideoEndedError

# skip_bad_samples in training: unreadable samples in a row, each replaced by another random one, before
# the data set is taken to be broken.
MAX_REPLACEMENTS = 10


class BadSampleError(FrameReadError):
    """A listed video that cannot be read: its list line, file and problem, in one line.

    The DataLoader raises a worker's exception again with the worker's traceback as its message; only
    the exception's own (last) line of that is kept.
    """

    def __init__(self, message: str):
        own_line = f"{type(self).__name__}: "
        if "\n" in message and own_line in message:
            message = message.rstrip().splitlines()[-1].split(own_line, 1)[1]
        super().__init__(message)


def collate_samples(items: Sequence[Tuple[Any, ...]]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                                                                 Optional[torch.Tensor], List[Tuple[int, str]]]:
    """(clips, labels, video indices, skipped) of a batch; ``skipped`` lists (video index, message) of the
    samples that skip_bad_samples replaced or left out (their clip is None), which are not in the batch
    (clips is None when none is left)."""
    skipped = [entry for item in items if len(item) > 3 for entry in item[3]]
    kept = [item[:3] for item in items if item[0] is not None]
    clips, labels, videos = default_collate(kept) if kept else (None, None, None)
    return clips, labels, videos, skipped


class VideoDataset(Dataset):
    """Training: one randomly placed clip per video. Testing: every (video, clip, crop) view.

    Items are (clip, label, video index); the video index lets evaluation merge the views of a
    video after they were spread over processes. Training clips are uint8 (TrainClipTransform: the
    training loop normalizes them on its device), test views float32, normalized. ``videos`` is a list file or its records.

    In test mode the first view of a video decodes and resizes every frame that its clips need, once,
    and the process keeps them for the views that follow (crops share their frames, clips overlap).
    Test transforms therefore come in two steps, ``resize_clip(frames)`` and ``crop_view(resized,
    crop_index)`` (EvalClipTransform). A video file that yields fewer frames than its list line
    says is sampled within the frames that do decode.

    A video that cannot be read raises a BadSampleError naming its list line. With ``skip_bad_samples``
    items carry a fourth element, the (video index, message) of each sample skipped: in training an
    unreadable sample is replaced by another random one; in test mode its clip is None (left out).
    """

    def __init__(self, videos: str | os.PathLike | Sequence[VideoRecord], root_path: str, storage_format: str,
                 clip_length: int, num_steps: int, num_segments: int, transform: Callable, train: bool,
                 num_clips: int = 1, num_crops: int = 1, loop_pad: bool = False,
                 num_classes: Optional[int] = None, video_backend: str = "opencv", skip_bad_samples: bool = False):
        self.root_path = root_path
        self.storage_format = storage_format
        self.records = read_list_file(videos, num_classes) if isinstance(videos, (str, os.PathLike)) else list(videos)
        self.read = make_reader(storage_format, video_backend)
        self.clip_length = clip_length
        self.num_steps = num_steps
        self.num_segments = num_segments
        self.transform = transform
        self.train = train
        self.num_clips = 1 if train else num_clips
        self.num_crops = 1 if train else num_crops
        self.loop_pad = loop_pad
        self.skip_bad_samples = skip_bad_samples
        for record in self.records:  # fail now, not in a data-loader worker
            check_clip_fits(record.num_frames, clip_length * num_steps, record.path, loop_pad, record.where())
        self._decodable: Dict[int, int] = {}  # video index -> frames that decode, where fewer than listed
        # Test mode: (video index, each clip's rows, resized frames) of the last video read by this process.
        self._cached: Optional[Tuple[int, List[List[int]], torch.Tensor]] = None

    @property
    def num_videos(self) -> int:
        return len(self.records)

    @property
    def views_per_video(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return self.num_videos * self.views_per_video

    def labels(self) -> np.ndarray:
        return np.array([record.label for record in self.records], dtype=np.int64)

    def _frame_ids(self, video_index: int, clip_index: int) -> List[int]:
        record = self.records[video_index]
        duration = self._decodable.get(video_index, record.num_frames)
        if self.train:
            offsets = train_offsets(duration, self.clip_length, self.num_steps, self.num_segments, record.path,
                                    self.loop_pad)
        else:
            offsets = eval_offsets(duration, self.clip_length, self.num_steps, self.num_segments, clip_index,
                                   self.num_clips, record.path, self.loop_pad)
        return clip_frame_ids(offsets, self.clip_length, self.num_steps, duration)

    def _decode(self, video_index: int, frame_ids: Sequence[int]) -> Optional[List[np.ndarray]]:
        """The frames; None when the file yields fewer frames than listed, whose count is then corrected."""
        record = self.records[video_index]
        try:
            return self.read(os.path.join(self.root_path, record.path), frame_ids)
        except VideoEndedError as err:
            # Streams that state more frames than they hold are common (Kinetics): use those that decode.
            listed = f"only {err.decodable} of the {record.num_frames} listed frames decode: "
            check_clip_fits(err.decodable, self.clip_length * self.num_steps, record.path, self.loop_pad, listed)
            warnings.warn(f"{record.where()}video '{record.path}': {listed}clips are sampled from those")
            self._decodable[video_index] = err.decodable
            return None

    def _decode_clips(self, video_index: int, clip_indices: Sequence[int]) -> Tuple[List[List[int]],
                                                                                  Dict[int, np.ndarray]]:
        """(frame ids of each clip, frame id -> frame), each frame decoded once for all the clips."""
        while True:
            clip_ids = [self._frame_ids(video_index, c) for c in clip_indices]
            wanted = sorted(set(chain.from_iterable(clip_ids)))
            frames = self._decode(video_index, wanted)
            if frames is not None:
                self._check_frame_sizes(video_index, wanted, frames)
                return clip_ids, dict(zip(wanted, frames))

    def _check_frame_sizes(self, video_index: int, frame_ids: Sequence[int], frames: Sequence[np.ndarray]) -> None:
        """A clip stacks its frames: one of another size is named here (numpy's error names no frame)."""
        first = frames[0].shape
        for frame_id, frame in zip(frame_ids, frames):
            if frame.shape != first:
                name = f" ({frame_file_name(frame_id)})" if self.storage_format == "FRAME" else ""
                raise FrameReadError(
                    f"video '{os.path.join(self.root_path, self.records[video_index].path)}': frame {frame_id}{name} "
                    f"is {frame.shape[1]}x{frame.shape[0]} pixels, frame {frame_ids[0]} {first[1]}x{first[0]}: "
                    f"all frames of a video must have one size")

    def _test_clips(self, video_index: int) -> Tuple[List[List[int]], torch.Tensor]:
        """Test mode: the resized frames every clip of the video needs, and each clip's rows in them."""
        if self._cached is None or self._cached[0] != video_index:
            clip_ids, frames = self._decode_clips(video_index, range(self.num_clips))
            row = {frame_id: i for i, frame_id in enumerate(frames)}
            self._cached = (video_index, [[row[i] for i in ids] for ids in clip_ids],
                            self.transform.resize_clip(list(frames.values())))
        return self._cached[1], self._cached[2]

    def _read_view(self, video_index: int, view: int) -> Tuple[torch.Tensor, int, int]:
        clip_index, crop_index = divmod(view, self.num_crops)
        record = self.records[video_index]
        try:
            if self.train:
                (clip_ids,), frames = self._decode_clips(video_index, [0])
                clip = self.transform([frames[i] for i in clip_ids])
            else:
                rows, resized = self._test_clips(video_index)
                clip = self.transform.crop_view(resized, crop_index, rows[clip_index])
        except (FrameReadError, ClipTooShortError) as err:
            raise BadSampleError(f"{record.where()}{err}") from None
        return clip, record.label, video_index

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        video_index, view = divmod(index, self.views_per_video)
        if not self.skip_bad_samples:
            return self._read_view(video_index, view)
        skipped: List[Tuple[int, str]] = []
        while True:
            try:
                return (*self._read_view(video_index, view), skipped)
            except BadSampleError as err:
                skipped.append((video_index, str(err)))
                if not self.train:
                    return None, self.records[video_index].label, video_index, skipped
                if len(skipped) > MAX_REPLACEMENTS:
                    raise BadSampleError(f"skip_bad_samples: {len(skipped)} randomly drawn training samples in a "
                                         f"row cannot be read, the last: {err}") from None
                video_index = int(torch.randint(self.num_videos, (1,)).item())
