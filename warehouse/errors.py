"""Errors a user can act on. Each message names what went wrong, which file, and what to do;
`ferlab` prints it as one line (`--debug` adds the traceback). Bad *rows* are not errors: they
become `rejects` rows and the run goes on. These are for an input, a setting or a data root
that is unusable as a whole."""

from __future__ import annotations


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
