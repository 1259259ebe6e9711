"""List files: one video per line, `<relative path> <number of frames> <label>`.

The path may contain spaces: the last two whitespace-separated fields are the numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional


class ListFileError(ValueError):
    """A list or class-name file that cannot be read."""


@dataclass(frozen=True)
class VideoRecord:
    path: str
    num_frames: int
    label: int
    line: int = 0  # 1-based line in list_file; both only name a listed video in error messages
    list_file: str = ""

    def where(self) -> str:
        """``'<list file>, line <n>: '`` for a listed video, ``''`` for one given directly."""
        return f"{self.list_file}, line {self.line}: " if self.list_file else ""


def read_list_file(list_file: str | os.PathLike, num_classes: Optional[int] = None) -> List[VideoRecord]:
    records = []
    try:
        with open(list_file, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ListFileError(f"list file not found: {list_file}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rstrip().rsplit(maxsplit=2)
        try:
            if len(fields) != 3:
                raise ValueError
            path, num_frames, label = fields[0], int(fields[1]), int(fields[2])
        except ValueError:
            raise ListFileError(f"{list_file}, line {number}: expected '<relative path> <number of frames> "
                                f"<label>', got {line!r}") from None
        if num_frames < 1:
            raise ListFileError(f"{list_file}, line {number}: number of frames must be positive, "
                                f"got {num_frames}")
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ListFileError(f"{list_file}, line {number}: label {label} outside [0, {num_classes})")
        records.append(VideoRecord(path, num_frames, label, number, str(list_file)))
    if not records:
        raise ListFileError(f"list file is empty: {list_file}")
    return records


def read_class_names(path: str | os.PathLike, num_classes: int) -> List[str]:
    """One class name per line, line i naming label i."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            names = [line.strip() for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ListFileError(f"class-name file not found: {path}") from None
    if len(names) != num_classes:
        raise ListFileError(f"{path}: has {len(names)} class names, expected num_classes = {num_classes}")
    return names
