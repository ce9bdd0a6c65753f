"""The data root's reports over HTTP, so that a report is one click from the Dagster UI (a browser
will not open a `file://` link from a web page).

`ferlab dev` serves `<data root>/reports/` and `<data root>/analysis/` on 127.0.0.1 beside the UI;
nothing else of the data root (media, tables, the Label Studio folder) is served. A report's link
is its path under the data root on the reports port (`report_url`), so it is the same whichever
process made the report, and stays right when the data root is copied or moved:

    report_url("reports/v-1/au-x/report.html")  # http://127.0.0.1:3001/reports/v-1/au-x/report.html

    python -m warehouse.reports --home var --port 3001      # what `ferlab dev` starts

On a cluster the server listens on the pod's address (`--host 0.0.0.0`) behind a Service, and
$FERLAB_REPORTS_URL (e.g. https://reports.ferlab.example.org) is the base of every report link.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)

PORT_ENV = "FERLAB_REPORTS_PORT"
URL_ENV = "FERLAB_REPORTS_URL"  # where people reach the server, when not on this machine
DEFAULT_PORT = 3001  # beside Dagster's 3000
SERVED = ("reports", "analysis")  # the data root's folders that are served; nothing else


def reports_port() -> int:
    """$FERLAB_REPORTS_PORT, else DEFAULT_PORT."""
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def report_url(relative: str | PurePosixPath, port: int | None = None) -> str:
    """The URL of a file under the data root (`relative`: its path from the root) on the reports
    server: under $FERLAB_REPORTS_URL when set (and no `port` is given), else on 127.0.0.1."""
    base = os.environ.get(URL_ENV, "").rstrip("/")
    if not base or port:
        base = f"http://127.0.0.1:{port or reports_port()}"
    return f"{base}/{quote(str(PurePosixPath(relative)))}"


_IMAGE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def served_markdown(text: str, folder: str | PurePosixPath, port: int | None = None) -> str:
    """Markdown whose relative image links (`![x](plot.png)`, relative to `folder`, the report's
    folder under the data root) point at the reports server, so the plots render in the Dagster
    UI; absolute and http links are left as they are."""

    def absolute(m: re.Match[str]) -> str:
        target = m.group(2)
        if urlsplit(target).scheme or target.startswith("/"):
            return m.group(0)
        return m.group(1) + report_url(PurePosixPath(folder) / target, port) + m.group(3)

    return _IMAGE.sub(absolute, text)


class _ReportsHandler(SimpleHTTPRequestHandler):
    """Files of the served folders only; no listing outside them, no path out of the root."""

    def send_head(self):  # noqa: ANN201 - http.server's signature
        parts = PurePosixPath(unquote(urlsplit(self.path).path)).parts
        if len(parts) < 2 or parts[1] not in SERVED or ".." in parts:
            self.send_error(404, "only the data root's reports are served")
            return None
        return super().send_head()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)


def reports_server(home: str | os.PathLike, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The server of the module docstring on `host`:`port` (not started: `serve_forever`)."""
    handler = functools.partial(_ReportsHandler, directory=str(Path(home).resolve()))
    return ThreadingHTTPServer((host, port), handler)


def serve_while_parent_lives(home: str | os.PathLike, port: int, host: str = "127.0.0.1") -> None:
    """Serve until the process that started this one is gone (`ferlab dev` execs Dagster, which
    this process outlives otherwise when Dagster is stopped alone); a container's first process,
    whose parent is outside it, serves until stopped."""
    server = reports_server(home, port, host)
    parent = os.getppid()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while os.getppid() == parent:
            time.sleep(1)
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a data root's reports and analysis folders.")
    parser.add_argument("--home", required=True, help="the data root")
    parser.add_argument("--port", type=int, default=reports_port())
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container behind a Service)"
    )
    args = parser.parse_args(argv)
    try:
        serve_while_parent_lives(args.home, args.port, args.host)
    except OSError as exc:  # the port is taken: the UI runs on, its report links do not answer
        print(
            f"error: cannot serve the reports on {args.host}:{args.port} ({exc.strerror}); "
            f"pass `ferlab dev --reports-port N` or set ${PORT_ENV}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
