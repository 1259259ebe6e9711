"""Errors in what the user gave: configuration, list files, videos, checkpoints, op inputs, paths.

Every such error derives from :class:`UserError`; its message names the problem (the key, file,
list line or tensor), so the command-line tools print it as one line and exit with status 2
(:func:`exit_on_user_error`), while bugs keep their traceback. The data, checkpoint and tool
modules derive their own errors from these; each also keeps the built-in base it always had
(ValueError, RuntimeError, ...), so code catching that still does.
"""
from __future__ import annotations

import contextlib
import os
import reprlib
import sys
from typing import Iterator

USAGE_ERROR_STATUS = 2  # the exit status of argparse's usage errors, for the same kind of mistake
INTERRUPTED_STATUS = 130  # the shells' status of a process ended by Ctrl-C (128 + SIGINT)
SHOWN_CHARACTERS = 100  # of a value in a message: a YAML value can be a whole document (aliases repeat nodes)
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 6
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = SHOWN_CHARACTERS


def shown(value: object) -> str:
    """The repr of a value for a one-line message, at most SHOWN_CHARACTERS long; the repr of the whole value is
    never made (that of a YAML alias bomb takes minutes)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 3] + "..."


class UserError(Exception):
    """An input that cannot be used, described by the message alone."""


class ConfigError(UserError, ValueError):
    """A configuration file or override that cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used: unreadable, damaged, or not what the run needs."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that holds no file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose entries do not fit the network."""


class InputError(UserError, ValueError):
    """An input of a tool (a file, folder or argument) that does not exist or cannot be used."""


class OpInputError(UserError, ValueError):
    """Tensors or arguments of a SIFA op with the wrong shape, value or device."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: a NaN or infinite loss, gradient norm, weight or statistic; nothing of that epoch
    is saved. A user error: the message names where it happened and the settings that cure it."""


class OpInputTypeError(UserError, TypeError):
    """Tensors or arguments of a SIFA op of the wrong type or dtype."""


class ExtensionNotBuiltError(UserError, RuntimeError):
    """The compiled SIFA kernels are needed but not loaded (not built, or built against another PyTorch)."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Runs a command-line tool's work: a UserError ends the process with its message on one line of
    stderr and exit status 2. Under torch.distributed every process meets the same error in the same
    inputs before the process group exists (the launchers set RANK), so rank 0 alone prints it; what
    one process meets in a training run is reported by `sifa.engine.distributed.stops_reported_once`."""
    try:
        yield
    except UserError as err:
        if int(os.environ.get("RANK", 0)) == 0:
            print_user_error(err)
        sys.exit(USAGE_ERROR_STATUS)


def print_user_error(err: UserError) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
