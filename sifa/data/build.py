"""Datasets as a configuration asks for them, and the synthetic data set it may name."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Optional, Sequence

from ..errors import ConfigError, shown
from ..user_files import folder_write_problem
from .list_file import VideoRecord
from .synthetic import generate
from .transforms import EvalClipTransform, TrainClipTransform
from .video_dataset import VideoDataset


def build_train_dataset(cfg: SimpleNamespace) -> VideoDataset:
    """One randomly placed, augmented clip per video of ``list_file`` (uint8; with ``augment_on_device`` the
    colour steps are left to the training loop's DeviceColourAugment)."""
    transform = TrainClipTransform(cfg.crop_size, cfg.no_horizontal_flip, cfg.rand_augment and cfg.colour_augment,
                                   cfg.ra_n, cfg.ra_m, cfg.time_dim,
                                   colour=cfg.colour_augment and not cfg.augment_on_device,
                                   min_crop_scale=cfg.min_crop_scale)
    return VideoDataset(cfg.list_file, cfg.root_path, cfg.format, cfg.clip_length, cfg.num_steps, cfg.num_segments,
                        transform, train=True, loop_pad=cfg.loop_pad, num_classes=cfg.num_classes,
                        video_backend=cfg.video_backend, skip_bad_samples=cfg.skip_bad_samples)


def build_eval_dataset(cfg: SimpleNamespace, final: bool,
                       videos: Optional[Sequence[VideoRecord]] = None) -> VideoDataset:
    """The test views of ``videos`` (default: those of ``eva_list_file``). Between epochs: num_clips x 1
    center crop at crop_size; ``final`` (``--eval_only``, the tools): the eva_* views."""
    if final:
        crop, crops, clips, segments = cfg.eva_crop_size, cfg.eva_num_crop, cfg.eva_num_clips, cfg.eva_num_segments
    else:
        crop, crops, clips, segments = cfg.crop_size, 1, cfg.num_clips, cfg.num_segments
    transform = EvalClipTransform(crop, crops, cfg.time_dim)
    return VideoDataset(cfg.eva_list_file if videos is None else videos, cfg.eva_root_path or cfg.root_path,
                        cfg.format, cfg.clip_length, cfg.num_steps, segments, transform, train=False,
                        num_clips=clips, num_crops=crops, loop_pad=cfg.loop_pad, num_classes=cfg.num_classes,
                        video_backend=cfg.video_backend, skip_bad_samples=cfg.skip_bad_samples)


def prepare_synthetic_data(cfg: SimpleNamespace) -> bool:
    """Generate the synthetic data set into ``synthetic_dir`` unless its list files exist; True if generated."""
    needed = [cfg.list_file, cfg.eva_list_file] + ([cfg.class_name_file] if cfg.class_name_file else [])
    if not cfg.synthetic_dir or all(os.path.isfile(p) for p in needed):
        return False
    problem = folder_write_problem(cfg.synthetic_dir, create=True)
    if problem:
        raise ConfigError(f"{cfg.config_file}: key 'synthetic_dir' {shown(cfg.synthetic_dir)}: cannot write the "
                          f"synthetic data set in this folder: {problem}")
    generate(cfg.synthetic_dir, cfg.num_classes, cfg.synthetic_videos_per_class, cfg.synthetic_val_videos_per_class,
             cfg.synthetic_frames, cfg.synthetic_size, cfg.synthetic_seed)
    return True
