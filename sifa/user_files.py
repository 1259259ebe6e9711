"""Files and folders the user names: text inputs (settings, list files, class names), read as UTF-8 with a
message naming the file and line where they are not, and output folders, checked for writing before the work
that fills them (a run or tool stops at once, naming the path and the reason, not after training or tracing).
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Type

from .errors import InputError, UserError


def read_text(path: str | os.PathLike, kind: str, error: Type[UserError]) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); a missing file, a folder or bytes that are
    not UTF-8 (Latin-1, binary) raise ``error`` naming the file (and line) and ``kind``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise error(f"{kind} not found: {path}") from None
    except OSError as err:  # a folder, no permission
        raise error(f"cannot read {kind} {path}: {err.strerror}") from None
    try:
        # utf-8-sig: editors on Windows start files with a BOM, which would become part of the first line.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        undecoded = err.object  # the bytes after a byte-order mark, which err.start counts in
        line = undecoded[:err.start].count(b"\n") + 1
        raise error(f"{path}, line {line}: byte 0x{undecoded[err.start]:02x} is not UTF-8 text; a {kind} must be "
                    f"UTF-8 (re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None


def folder_write_problem(folder: str, create: bool) -> Optional[str]:
    """Why no file can be written in ``folder`` (made first, with its parents, when ``create``), or None: a file
    is created there and removed, so a read-only file system or folder counts, whoever runs it."""
    try:
        if create:
            os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    except ValueError as err:  # an embedded NUL byte
        return str(err)
    return None


def check_output_folder(folder: str, option: str) -> None:
    """An output folder of a tool, made if absent; an InputError naming ``option`` if nothing can be written in it."""
    problem = folder_write_problem(folder, create=True)
    if problem:
        raise InputError(f"{option} {folder}: cannot write in this folder: {problem}")


def check_output_file(path: str, option: str) -> None:
    """An output file of a tool, checked before the work: its folder must exist and take files, and it must not
    be a folder itself."""
    if os.path.isdir(path):
        raise InputError(f"{option} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        state = "is a file" if os.path.exists(folder) else "does not exist"
        raise InputError(f"{option} {path}: folder {folder} {state}")
    problem = folder_write_problem(folder, create=False)
    if problem:
        raise InputError(f"{option} {path}: cannot write in folder {folder}: {problem}")
