"""Reports one click from the Dagster UI (issue 24): served over HTTP from the data root
(warehouse.reports), linked from the assets by their path under the root."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dagster import MetadataValue

from assets.metadata import report_metadata
from warehouse.reports import report_url, reports_server, served_markdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(home: Path) -> Path:
    folder = home / "reports" / "v-1" / "au-model"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text(
        "# AU model\n\n![F1 per AU](per_au.png)\n\n![x](https://example.org/a.png)\n"
    )
    (folder / "report.html").write_text("<h1>AU model</h1>")
    (folder / "per_au.png").write_bytes(b"\x89PNG\r\n")
    (home / "warehouse.duckdb").write_bytes(b"secret tables")
    (home / "labelstudio").mkdir()
    (home / "labelstudio" / "admin-password").write_text("hunter2")
    return folder / "report.md"


def test_report_metadata_links_by_the_path_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_REPORTS_PORT", "3999")
    markdown = _report(tmp_path / "var")
    meta = report_metadata(markdown, tmp_path / "var")
    assert meta["report"] == MetadataValue.path("reports/v-1/au-model/report.md")  # not absolute
    assert meta["report_html"] == MetadataValue.url("http://127.0.0.1:3999/reports/v-1/au-model/report.html")
    summary = meta["summary"].value
    assert "](http://127.0.0.1:3999/reports/v-1/au-model/per_au.png)" in summary  # the plot renders
    assert "](https://example.org/a.png)" in summary  # other links as they were
    assert "version_reports" not in meta  # no index page yet
    (tmp_path / "var" / "reports" / "v-1" / "index.html").write_text("<ul></ul>")
    meta = report_metadata(markdown, tmp_path / "var")
    assert meta["version_reports"] == MetadataValue.url("http://127.0.0.1:3999/reports/v-1/index.html")
    # the same report in a copied data root gives the same metadata
    copy = tmp_path / "elsewhere" / "root"
    copy.parent.mkdir()
    (tmp_path / "var").rename(copy)
    assert report_metadata(copy / "reports/v-1/au-model/report.md", copy) == meta


def test_served_markdown_leaves_absolute_links():
    text = "![a](/abs.png) ![b](sub/b.png) [not an image](c.png)"
    out = served_markdown(text, "analysis/disfa/SN001", port=4000)
    assert out == (
        "![a](/abs.png) ![b](http://127.0.0.1:4000/analysis/disfa/SN001/sub/b.png) [not an image](c.png)"
    )
    assert report_url("reports/a b/r.html", 4000) == "http://127.0.0.1:4000/reports/a%20b/r.html"


def test_the_server_answers_with_reports_and_nothing_else(tmp_path):
    home = tmp_path / "var"
    _report(home)
    port = _free_port()
    server = reports_server(home, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = report_url("reports/v-1/au-model/report.html", port)
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200 and answer.read() == b"<h1>AU model</h1>"
            assert answer.headers["Content-Type"] == "text/html"
        with urllib.request.urlopen(report_url("reports/v-1/au-model/per_au.png", port), timeout=10) as a:
            assert a.headers["Content-Type"] == "image/png"
        for path in (
            "warehouse.duckdb",
            "labelstudio/admin-password",
            "reports/../warehouse.duckdb",
            "reports/%2e%2e/warehouse.duckdb",
            "",
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10)
            assert refused.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_port_is_one_line(tmp_path, capsys):
    from warehouse.reports import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            main(["--home", str(tmp_path), "--port", str(port)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot serve the reports on 127.0.0.1:{port}") and "--reports-port" in err
    assert len(err.splitlines()) == 1


def test_a_cluster_links_reports_at_its_own_address(tmp_path, monkeypatch):
    """Behind a Service or an Ingress the links use $FERLAB_REPORTS_URL, and the server listens
    on the address it is given."""
    monkeypatch.setenv("FERLAB_REPORTS_URL", "https://reports.example.org/")
    assert (
        report_url("reports/v-1/a b/report.html")
        == "https://reports.example.org/reports/v-1/a%20b/report.html"
    )
    _report(tmp_path)
    port = _free_port()
    server = reports_server(tmp_path, port, host="0.0.0.0")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/reports/v-1/au-model/report.html"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == b"<h1>AU model</h1>"
    finally:
        server.shutdown()
