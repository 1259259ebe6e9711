"""The video Dataset: list file + storage format + clip sampling + clip transforms."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .list_file import VideoRecord, read_list_file
from .sampling import check_clip_fits, clip_frame_ids, eval_offsets, train_offsets
from .storage import make_reader


class VideoDataset(Dataset):
    """Training: one randomly placed clip per video. Testing: every (video, clip, crop) view.

    Items are (clip, label, video index); the video index lets evaluation merge the views of a
    video after they were spread over processes. ``videos`` is a list file or its records.
    """

    def __init__(self, videos: str | os.PathLike | Sequence[VideoRecord], root_path: str, storage_format: str,
                 clip_length: int, num_steps: int, num_segments: int, transform: Callable, train: bool,
                 num_clips: int = 1, num_crops: int = 1, loop_pad: bool = False,
                 num_classes: Optional[int] = None):
        self.root_path = root_path
        self.records = read_list_file(videos, num_classes) if isinstance(videos, (str, os.PathLike)) else list(videos)
        self.read = make_reader(storage_format)
        self.clip_length = clip_length
        self.num_steps = num_steps
        self.num_segments = num_segments
        self.transform = transform
        self.train = train
        self.num_clips = 1 if train else num_clips
        self.num_crops = 1 if train else num_crops
        self.loop_pad = loop_pad
        for record in self.records:  # fail now, not in a data-loader worker
            check_clip_fits(record.num_frames, clip_length * num_steps, record.path, loop_pad, record.where())

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

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        video_index, view = divmod(index, self.views_per_video)
        clip_index, crop_index = divmod(view, self.num_crops)
        record = self.records[video_index]
        video = os.path.join(self.root_path, record.path)
        if self.train:
            offsets = train_offsets(record.num_frames, self.clip_length, self.num_steps, self.num_segments,
                                    video, self.loop_pad)
        else:
            offsets = eval_offsets(record.num_frames, self.clip_length, self.num_steps, self.num_segments,
                                   clip_index, self.num_clips, video, self.loop_pad)
        frames = self.read(video, clip_frame_ids(offsets, self.clip_length, self.num_steps, record.num_frames))
        clip = self.transform(frames) if self.train else self.transform(frames, crop_index)
        return clip, record.label, video_index
