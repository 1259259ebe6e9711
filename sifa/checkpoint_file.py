"""Checkpoint files: reading, writing, the SHA-256 sidecar, and the atomic write every saved file uses.

Two formats, told apart by the file name: PyTorch's (``.pth`` and any other name) and safetensors
(``.safetensors``, weights only). A checkpoint holds only tensors and plain Python data, so
:func:`load_checkpoint` reads a PyTorch file weights-only, without running pickled code; a safetensors
file holds ``model`` (the tensors) and the plain data beside them as JSON in its metadata, and reads
back as the same dictionary. A SHA-256 file beside each (``<digest>  <file name>``: ``sha256sum -c``
checks it from the checkpoint's folder) lets the loader tell a damaged file; a file copied without it is
checked against the CRC-32 its zip archive (PyTorch's format) stores for every member, or against the
SHA-256 of its tensors in its metadata (safetensors). Files are written
to a .tmp, flushed and renamed, so a kill or a full disk never replaces a good file with a partial one.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import zipfile
from typing import IO, Any, Callable, Dict, List, Mapping, Optional

import torch

from .errors import CheckpointError, CheckpointNotFoundError, UserError

ZIP_MAGIC = b"PK\x03\x04"  # how the files of torch.save begin
# The weights-only unpickler's refusal of a global, as PyTorch words it ("Unsupported global: GLOBAL x.y",
# since 2.14 "unsupported GLOBAL x.y whose module x is blocked").
_REFUSED_GLOBAL = re.compile(r"unsupported global:? (?:GLOBAL )?([\w.]+)", re.IGNORECASE)
TMP = ".tmp"
SAFETENSORS = ".safetensors"
TENSORS_SHA256 = "tensors_sha256"  # the metadata entry of a safetensors file that checks its tensors


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written (the previous one at that path is kept)."""


def checksum_path(path: str | os.PathLike) -> str:
    """The SHA-256 file written beside a checkpoint (``sha256sum -c`` reads it)."""
    return os.fspath(path) + ".sha256"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checksum(sidecar: str) -> Optional[str]:
    """The digest a SHA-256 file (``<digest>  <name>``) holds, or None when it holds none."""
    with open(sidecar, "r", encoding="ascii", errors="replace") as f:
        fields = f.read().split(maxsplit=1)
    return fields[0] if fields else None


def remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_synced(tmp: str, write: Callable[[IO], None], binary: bool) -> None:
    """``write(f)`` into ``tmp``, flushed to disk; a failed write removes the partial file."""
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_if_present(tmp)
        raise


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """``write(f)`` into ``path``.tmp, flushed to disk, then renamed to ``path``: an interrupted write leaves
    the previous file intact."""
    _write_synced(path + TMP, write, binary)
    os.replace(path + TMP, path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def _os_error_behind(error: BaseException) -> Optional[OSError]:
    """The OSError that ``error`` is or was raised while handling: torch.save reports a failed write of its
    file (a full disk) as a RuntimeError ("unexpected pos ...") raised while the OSError unwinds."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _write_error(path: str, error: OSError, needed: int, kept: str) -> CheckpointWriteError:
    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free
    return CheckpointWriteError(f"cannot write checkpoint {path}: {error.strerror or error} ({folder} has "
                                f"{free / 2**20:.1f} MiB free, the file needs about {needed / 2**20:.1f} MiB); the "
                                f"partial file was removed and {kept}")


def publish(tmp: str, path: str, digest: str) -> None:
    """Move a written ``tmp`` to ``path`` and its SHA-256 beside it.

    The checksum goes through its own .tmp: a kill between the two renames leaves the new checkpoint with
    its new checksum still pending, which `remove_leftover_tmp` completes at the next start."""
    checksum = checksum_path(path)
    with open(checksum + TMP, "w", encoding="ascii") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    os.replace(tmp, path)
    os.replace(checksum + TMP, checksum)


def is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(SAFETENSORS)


def _safetensors_bytes(obj: Mapping[str, Any], path: str) -> bytes:
    """``obj["model"]`` (a state dict) as safetensors, every other entry JSON-encoded in the metadata."""
    from safetensors.torch import save

    if not isinstance(obj.get("model"), Mapping):
        raise CheckpointWriteError(f"cannot write {path}: a safetensors file holds weights only, under 'model'")
    # copies: safetensors refuses tensors that share storage, as tied or cloned state-dict entries may
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in obj["model"].items()}
    metadata = {key: json.dumps(value) for key, value in obj.items() if key != "model"}
    metadata[TENSORS_SHA256] = _tensors_sha256(tensors)
    return save(tensors, metadata=metadata)


def _tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256 of the names and bytes of ``tensors``: a safetensors file copied without its SHA-256 file
    still checks its own tensors with it."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _metadata_value(text: str) -> Any:
    """A metadata entry as written by :func:`_safetensors_bytes` (JSON); other writers' plain strings as such."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def save_checkpoint_file(obj: Any, path: str) -> str:
    """Write ``obj`` to ``path`` through ``path``.tmp, flushed to disk first, with its SHA-256 beside it;
    returns the digest. A ``.safetensors`` path takes ``{"model": state dict, **plain data}``."""
    if is_safetensors(path):
        data = _safetensors_bytes(obj, path)
        write = lambda f: f.write(data)  # noqa: E731
    else:
        write = lambda f: torch.save(obj, f)  # noqa: E731
    try:
        _write_synced(path + TMP, write, binary=True)
    except (OSError, RuntimeError) as e:
        os_error = _os_error_behind(e)
        if os_error is None:
            raise
        raise _write_error(path, os_error, _tensor_bytes(obj), "the previous checkpoint there is kept") from None
    digest = file_sha256(path + TMP)
    publish(path + TMP, path, digest)
    return digest


def copy_checkpoint_file(source: str, path: str, digest: str) -> None:
    """Copy the checkpoint ``source`` (whose SHA-256 is ``digest``) to ``path``, atomically, with its SHA-256."""
    try:
        shutil.copyfile(source, path + TMP)
    except OSError as e:
        remove_if_present(path + TMP)
        raise _write_error(path, e, os.path.getsize(source), f"{source} is saved") from None
    publish(path + TMP, path, digest)


def remove_leftover_tmp(output_dir: str) -> List[str]:
    """Remove the .tmp files of saves a kill interrupted; returns their names.

    A checksum whose checkpoint was already renamed into place (the kill fell between the two renames of
    `publish`) is completed instead."""
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if not name.endswith(TMP):
            continue
        path = os.path.join(output_dir, name)
        target = path[:-len(TMP)]
        checkpoint = target[:-len(".sha256")] if target.endswith(".sha256") else None
        if checkpoint and os.path.isfile(checkpoint) and read_checksum(path) == file_sha256(checkpoint):
            os.replace(path, target)
            continue
        remove_if_present(path)
        removed.append(name)
    return removed


def verify_checksum(path: str | os.PathLike) -> bool:
    """A CheckpointError when ``path`` differs from the SHA-256 saved beside it; returns whether it has one.

    A checkpoint whose new checksum is still pending (a kill between the two renames of `publish`) matches
    that one."""
    sidecar = checksum_path(path)
    if not os.path.isfile(sidecar):
        return False
    digest = file_sha256(path)
    pending = sidecar + TMP
    if read_checksum(sidecar) != digest and not (os.path.isfile(pending) and read_checksum(pending) == digest):
        raise CheckpointError(f"{path} does not match the SHA-256 in {sidecar}: the file was changed or damaged "
                              f"after it was saved")
    return True


def zip_damage(path: str | os.PathLike) -> Optional[str]:
    """What is wrong with the zip archive ``path`` (torch.save's format): a member that does not match its
    CRC-32, or a structure that does not read; None when it is intact."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except Exception as e:  # damaged headers fail in many ways (BadZipFile, struct.error, ValueError, ...)
        return f"its zip structure does not read ({e})"
    return f"its member {bad_member} does not match the CRC-32 stored for it" if bad_member else None


def verify_integrity(path: str | os.PathLike, is_zip: bool) -> None:
    """A CheckpointError when ``path`` fails its SHA-256 file or, without one, the CRC-32s of its zip archive."""
    if verify_checksum(path) or not is_zip:
        return
    damage = zip_damage(path)
    if damage:
        raise CheckpointError(f"{path} is damaged: {damage} (it has no SHA-256 file {checksum_path(path)})")


def _load_safetensors(path: str | os.PathLike, size: int) -> Dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({size} bytes): {e}") from None
    stored_digest = metadata.pop(TENSORS_SHA256, None)
    # Files of other writers hold no such entry; the SHA-256 file, when there is one, checks the whole file.
    if not verify_checksum(path) and stored_digest and stored_digest != _tensors_sha256(tensors):
        raise CheckpointError(f"{path} is damaged: its tensors do not match the SHA-256 stored in its metadata (it "
                              f"has no SHA-256 file {checksum_path(path)})")
    return {"model": tensors, **{key: _metadata_value(value) for key, value in metadata.items()}}


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """The checkpoint file's contents on the CPU; the original's checkpoints also hold an argparse.Namespace.
    A ``.safetensors`` file reads as ``{"model": its tensors, **its metadata}``.

    An empty, truncated, damaged or foreign file, or one that fails its SHA-256, raises one CheckpointError
    naming the file and the problem."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the save that wrote it did not finish")
    if is_safetensors(path):
        return _load_safetensors(path, size)
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # A damaged file can fail the weights-only check too: only an intact one holds what it refuses.
        verify_integrity(path, is_zip)
        # torch's message advises weights_only=False, which would run the file's pickled code: not repeated.
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain data (it names "
                                  f"{refused.group(1)}, code that unpickling would run): it was not loaded") from None
        problem = "is damaged" if is_zip else "is not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {problem} ({size} bytes)") from None
    except Exception:  # arbitrary bytes make the unpickler fail in arbitrary ways (KeyError, IndexError, ...)
        problem = "is truncated or damaged (an incomplete zip archive)" if is_zip else "is not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {problem} ({size} bytes)") from None
    # After the read, so that a file that does not even load is described as such.
    verify_integrity(path, is_zip)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint (a dictionary of "
                              f"named entries)")
    return checkpoint


def non_finite_entries(state: Any, name: str = "") -> List[str]:
    """The names (``model.bn1.running_var``, ``optimizer.3.momentum_buffer``) of the floating-point
    tensors in ``state`` (nested dicts and lists) that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return [name] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [found for key, value in items for found in non_finite_entries(value, f"{name}.{key}" if name else str(key))]
