"""List files: one video per line, `<relative path> <number of frames> <label>`.

The path may contain spaces: the last two whitespace-separated fields are the numbers.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..errors import UserError
from ..user_files import read_text


# Frame ids are drawn as 64-bit ints; a count beyond this (2.7 years at 25 fps) is a typo.
MAX_FRAMES = 2**31 - 1
SHOWN_CONFLICTS = 5  # videos named in the warning about videos listed with different labels


class ListFileError(UserError, ValueError):
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


def read_text_lines(path: str | os.PathLike, kind: str) -> List[str]:
    """The lines of a UTF-8 text file; a missing file, a folder or bytes that are not UTF-8 raise a ListFileError
    naming the file, the line and ``kind``."""
    return read_text(path, kind, ListFileError).splitlines()


def read_list_file(list_file: str | os.PathLike, num_classes: Optional[int] = None) -> List[VideoRecord]:
    records = []
    lines = read_text_lines(list_file, "list file")
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
        if not 1 <= num_frames <= MAX_FRAMES:
            raise ListFileError(f"{list_file}, line {number}: number of frames must lie in [1, {MAX_FRAMES}], "
                                f"got {num_frames}")
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ListFileError(f"{list_file}, line {number}: label {label} outside [0, {num_classes})")
        records.append(VideoRecord(path, num_frames, label, number, str(list_file)))
    if not records:
        raise ListFileError(f"list file is empty: {list_file}")
    warn_of_label_conflicts(records)
    return records


def warn_of_label_conflicts(records: List[VideoRecord]) -> None:
    """Warn, naming the lines, of a video listed more than once with different labels: each line is a sample, so
    the same clips are taught as two classes (a merge of two lists, a mislabelled copy)."""
    lines: Dict[str, List[VideoRecord]] = defaultdict(list)
    for record in records:
        lines[os.path.normpath(record.path)].append(record)
    conflicts = [same for same in lines.values() if len({record.label for record in same}) > 1]
    if not conflicts:
        return
    named = "; ".join(f"'{same[0].path}' on lines " + ", ".join(f"{r.line} (label {r.label})" for r in same)
                      for same in conflicts[:SHOWN_CONFLICTS])
    more = f"; and {len(conflicts) - SHOWN_CONFLICTS} more" if len(conflicts) > SHOWN_CONFLICTS else ""
    warnings.warn(f"{records[0].list_file}: {len(conflicts)} video(s) listed with different labels: {named}{more}",
                  stacklevel=3)


def read_class_names(path: str | os.PathLike, num_classes: int) -> List[str]:
    """One class name per line, line i naming label i."""
    names = [line.strip() for line in read_text_lines(path, "class-name file") if line.strip()]
    if len(names) != num_classes:
        raise ListFileError(f"{path}: has {len(names)} class names, expected num_classes = {num_classes}")
    return names
