"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.
A crash at any point leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_counter = itertools.count()


@contextlib.contextmanager
def atomic_path(target: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed onto `target`.

    `durable` also fsyncs the file first (survives power loss, not only a killed process);
    the media store skips it for tens of thousands of small content-addressed files."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process, thread and call: a dot-name that no table glob or media lookup matches.
    tmp_path = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}-{next(_counter)}.tmp")
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
