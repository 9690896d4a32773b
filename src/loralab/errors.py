"""Errors that reach the user as one line: what is wrong and how to fix it."""

import errno

# the write errors of a full disk, a quota and a file-size limit: reported as "free space"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class LoralabError(Exception):
    """Base class: the CLI prints these as a single line, without a traceback."""


class ConfigError(LoralabError):
    """A configuration value is invalid; raised before any model loads."""


class DataError(LoralabError):
    """The data cannot be used as configured (missing file, columns, empty after filtering)."""


class ModelError(LoralabError):
    """The base model cannot be found or loaded as configured."""


class FreezeError(LoralabError):
    """Targets matched nothing, or a base weight is trainable."""


class MergeCheckError(LoralabError):
    """The merged model's outputs differ from the adapter model's beyond tolerance."""


class CheckpointError(LoralabError):
    """A checkpoint did not read back as it was saved, or cannot be resumed from."""


class NonFiniteError(LoralabError):
    """A nan or inf appeared in the loss, the gradients or the adapter's weights."""


class Interrupted(LoralabError):
    """The run was stopped by a signal (SIGTERM from a scheduler, Ctrl-C) after saving a
    checkpoint. The process exits with 128 + the signal's number, as a shell reports it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
