"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.
A crash at any point leaves either the old file or the new one, never half of one. Whole folders
are published the same way (`publish_dir`: built beside the target, then swapped in)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

_counter = itertools.count()
TMP_SUFFIX = ".tmp"
# Temp names hold the writer's pid: `.<target>.<pid>-<thread>[-<n>].tmp`.
_TMP_PID = re.compile(r"\.(\d+)-\d+(?:-\d+)?\.tmp$")
_STALE_AFTER_S = 24 * 3600  # a pid may be reused; a temp file this old is stale regardless


def is_stale_tmp(path: str | Path) -> bool:
    """Whether a temp file was left by a writer that is gone (killed mid-write)."""
    path = Path(path)
    match = _TMP_PID.search(path.name)
    if not match:
        return False
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > _STALE_AFTER_S:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def tmp_name(name: str) -> str:
    """The temp name beside a target named `name`: unique per process, thread and call, a
    dot-name that no table glob or media lookup matches, and what `is_stale_tmp` reads."""
    return f".{name}.{os.getpid()}-{threading.get_ident()}-{next(_counter)}{TMP_SUFFIX}"


@contextlib.contextmanager
def atomic_path(target: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed onto `target`.

    `durable` also fsyncs the file first (survives power loss, not only a killed process);
    the media store skips it for tens of thousands of small content-addressed files."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(tmp_name(target.name))
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_path(target, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_small(target: str, data: bytes) -> None:
    """`atomic_write_bytes(target, data, durable=False)` in bare os calls, for tens of thousands
    of small files (an ingest's media): the same temp name beside the target, then a rename, but
    no Path objects, no folder creation (the target's folder must exist) and no unlink after the
    rename; for a file of a few KB that overhead outweighs the write."""
    folder, _, name = target.rpartition(os.sep)
    tmp = f"{folder}{os.sep}{tmp_name(name)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_dir(tmp: str | Path, target: str | Path) -> None:
    """Put the finished folder `tmp` at `target`, replacing an old one whole: a reader sees the old
    folder or the new one, never a mix. `tmp` must be on the same file system (build it beside
    `target`); it is gone afterwards.

    Raises:
        OSError: the rename failed (the old folder is then left in place).
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if not target.exists():
                raise
    if _rename_exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
        return
    # Fallback (non-Linux, file systems without RENAME_EXCHANGE): two renames, restoring on failure.
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
