"""Guards of a training run: one run per output directory, and workers that stop with their launcher.

torchrun and torch.distributed.launch start each worker in a session of its own, so killing the
launcher's process group leaves the workers training (and saving) on; a second run started in the
same output directory would then write beside them.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from typing import IO

from ..errors import UserError

LOCK_FILE = "run.lock"
LAUNCHER_POLL_S = 1.0


class OutputDirLockedError(UserError, RuntimeError):
    """Another live run trains in the same output directory."""


class OutputDirLock:
    """An exclusive lock on ``<output_dir>/run.lock`` holding the pid and host of the run.

    The lock is the kernel's (flock): it goes with the process that holds it, so the lock file of a
    run that died is taken over without a check of its pid."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        os.makedirs(output_dir, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "a process that has not written its pid yet"
            self._file.close()
            raise OutputDirLockedError(f"{output_dir} is in use by another training run ({holder}; see {self.path}): "
                                       f"stop that run or choose another output_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.close()  # closing releases the lock
            self._file = None


def launched_by_torchrun() -> bool:
    """True in a worker of torchrun or torch.distributed.launch (both run the elastic agent)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_with_launcher(poll_s: float = LAUNCHER_POLL_S) -> None:
    """In a worker of torchrun or torch.distributed.launch, exit as soon as the launcher is gone.

    A daemon thread watches the parent pid: when the launcher dies the worker is re-parented. Runs
    without a launcher are left alone (a run under nohup outlives its shell on purpose)."""
    if not launched_by_torchrun():
        return
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        print(f"[pid {os.getpid()}] the launcher (pid {launcher}) is gone: this worker exits", file=sys.stderr,
              flush=True)
        os._exit(1)  # at once: this thread cannot unwind the training loop, and must not save anything

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()
