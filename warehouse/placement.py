"""Where a piece of work runs: the host, the process and, inside a dask worker (the dask executor
of several machines, dagster_project.dask_executor), the worker's name. The assets record it in
their metadata, so the Dagster UI shows which machine did which step."""

from __future__ import annotations

import contextlib
import os
import socket
import sys


def where_running() -> dict[str, str]:
    """{"host", "pid"} and, when this runs as a task of a dask worker, "dask_worker" (its name,
    `dask worker --name`). Looks for dask only when `distributed` is loaded already: a process
    that is no dask worker never imports it."""
    place = {"host": socket.gethostname(), "pid": str(os.getpid())}
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        with contextlib.suppress(ValueError):  # ValueError: not inside a dask worker's task
            place["dask_worker"] = str(distributed.get_worker().name)
    return place
