"""Errors a user can act on. Each message names what went wrong, which file, and what to do;
`ferlab` prints it as one line (`--debug` adds the traceback). Bad *rows* are not errors: they
become `rejects` rows and the run goes on. These are for an input, a setting or a data root
that is unusable as a whole."""

from __future__ import annotations

import errno


class FerlabError(Exception):
    """Base class: the message is complete and meant for the user as it is."""


class InputError(FerlabError, ValueError):
    """An input file or folder is unusable as a whole (wrong kind of file, not the expected layout)."""


class ConfigError(FerlabError, ValueError):
    """A setting is invalid (unknown name, value out of range, options that do not go together)."""


class StorageError(FerlabError, OSError):
    """The data root cannot be read or written (read-only, disk full, a damaged table part)."""


class UnsafeFileError(FerlabError, ValueError):
    """A file that could run code when loaded (a pickle calling outside the model's classes) was refused."""


_ERRNO_HINTS = {
    errno.ENOSPC: "the disk is full: free space or give another --home",
    errno.EDQUOT: "the disk quota is exceeded: free space or give another --home",
    errno.EROFS: "the file system is read-only: give a writable --home",
    errno.EACCES: "no permission: check the file's owner and mode, or give a --home you can write to",
    errno.EPERM: "no permission: check the file's owner and mode, or give a --home you can write to",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    hint = _ERRNO_HINTS.get(exc.errno or 0)
    return f"{what}{where}" + (f"; {hint}" if hint else "")
