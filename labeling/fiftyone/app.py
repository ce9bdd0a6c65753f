"""The FiftyOne App on a synced dataset (labeling.fiftyone.sync), served until interrupted.

The App's server reads the database of the process that started it. A FiftyOne server already on
the port is joined only when it reads this process's database (another data root's App would show
that root's dataset under this one's name): else the port is refused, in one line."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from labeling.fiftyone.sync import DEFAULT_NAME, PORT_VAR, check_dataset_root, import_fiftyone
from warehouse.errors import ConfigError


def _fiftyone_server(address: str, port: int) -> bool:
    import requests

    try:
        return "version" in requests.get(f"http://{address}:{port}/fiftyone", timeout=2).json()
    except Exception:
        return False


def _database_of(env: dict[str, str]) -> str | None:
    """Which database a FiftyOne process reads, from its environment: the server the user set,
    else the port of the mongod its parent opened (labeling.fiftyone.sync)."""
    return env.get("FIFTYONE_DATABASE_URI") or env.get(PORT_VAR)


def _server_process(port: int):
    """This user's FiftyOne App server started on `port` (its service process), or None."""
    import psutil
    from fiftyone.service.util import find_processes_by_args

    for process in find_processes_by_args(["--51-service", "server"]):
        try:
            cmd = process.cmdline()
        except psutil.Error:
            continue
        if "--port" in cmd[:-1] and cmd[cmd.index("--port") + 1] == str(port):
            return process
    return None


def _check_server(address: str, port: int) -> None:
    """Join the FiftyOne server on the port only when it reads this process's database."""
    import psutil

    server = _server_process(port)
    try:
        theirs = _database_of(server.environ()) if server is not None else None
    except psutil.Error:
        theirs = None
    ours = _database_of(dict(os.environ))
    if ours is not None and theirs == ours:
        return  # the session attaches to it
    who = f" (process {server.pid})" if server is not None else ""
    raise ConfigError(
        f"{address}:{port} serves the FiftyOne App of another database{who}, maybe another data root's: "
        "pick another --port"
    )


def _check_port(address: str, port: int) -> None:
    """Fail fast when something other than a FiftyOne server of this database holds the port
    (FiftyOne would wait a minute for its server, then time out; or show another database)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return
        except OSError as exc:
            if _fiftyone_server(address, port):
                _check_server(address, port)
                return
            raise OSError(f"{address}:{port} is in use by another program; pick another port") from exc


def launch_review(
    name: str = DEFAULT_NAME, port: int = 5151, address: str = "127.0.0.1", home: str | Path | None = None
) -> None:
    """Serve the FiftyOne App on the dataset `name` at http://address:port until Ctrl-C
    (SIGINT) or SIGTERM, then stop the App's server. With `home`, the data root the dataset
    must hold (another root's is refused).

    Raises LookupError when the dataset does not exist, ConfigError when it (or the database)
    is another root's or the port serves another database's App."""
    import signal
    import threading

    fo = import_fiftyone(home)
    if not fo.dataset_exists(name):
        raise LookupError(f"no FiftyOne dataset {name!r}: run the sync first")
    dataset = fo.load_dataset(name)
    if home is not None:
        check_dataset_root(dataset, home)
    _check_port(address, port)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        # Also when started in the background with SIGINT ignored, and by process managers.
        handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    session = None
    try:
        session = fo.launch_app(dataset, remote=True, address=address, port=port, auto=False)
        print(
            f"FiftyOne App on http://{address}:{port} ({len(dataset)} samples in {name!r}); Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if session is not None:
            session.close()
        # (interrupted while starting: the App's server stops when this process exits)
