"""Video data: list files, frame storage readers, clip sampling, clip transforms and the Dataset."""
from .list_file import ListFileError, VideoRecord, read_class_names, read_list_file
from .sampling import ClipTooShortError, clip_frame_ids, eval_offsets, train_offsets
from .storage import FrameReadError, make_reader
from .video_dataset import BadSampleError, VideoDataset, collate_samples

__all__ = ["ListFileError", "VideoRecord", "read_class_names", "read_list_file", "ClipTooShortError",
           "clip_frame_ids", "eval_offsets", "train_offsets", "FrameReadError", "make_reader",
           "BadSampleError", "VideoDataset", "collate_samples"]
