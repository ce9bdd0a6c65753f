"""The FiftyOne App on a synced dataset (labeling.fiftyone.sync), served until interrupted."""

from __future__ import annotations

import socket
import time

from labeling.fiftyone.sync import DEFAULT_NAME, import_fiftyone


def _fiftyone_server(address: str, port: int) -> bool:
    import requests

    try:
        return "version" in requests.get(f"http://{address}:{port}/fiftyone", timeout=2).json()
    except Exception:
        return False


def _check_port(address: str, port: int) -> None:
    """Fail fast when something other than a FiftyOne server holds the port (FiftyOne would
    wait a minute for its server, then time out)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return
        except OSError as exc:
            if _fiftyone_server(address, port):
                return  # FiftyOne's own server: the session attaches to it
            raise OSError(f"{address}:{port} is in use by another program; pick another port") from exc


def launch_review(name: str = DEFAULT_NAME, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Serve the FiftyOne App on the dataset `name` at http://address:port until Ctrl-C
    (SIGINT) or SIGTERM, then stop the App's server."""
    import signal
    import threading

    fo = import_fiftyone()
    if not fo.dataset_exists(name):
        raise LookupError(f"no FiftyOne dataset {name!r}: run the sync first")
    _check_port(address, port)
    dataset = fo.load_dataset(name)

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
