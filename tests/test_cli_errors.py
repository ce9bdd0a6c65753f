"""Issue 9, points 2 and 12: `ferlab sql` is read-only unless --write, and every error a user can
cause is one line on stderr with a non-zero exit (`--debug` for the traceback)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse
from warehouse.sources.fer2013 import ingest_fer2013

FERLAB = [sys.executable, "-m", "ferlab"]


def _ferlab(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FERLAB, "--home", str(home), *args], capture_output=True, text=True)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    # What is left once progress bars (stderr, cleared as they close) are set aside.
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path) -> Path:
    wh = Warehouse(tmp_path / "home")
    ingest_fer2013(wh, write_fer2013_sample(tmp_path / "fer.csv", rows=8, faces=False), show_progress=False)
    return wh.home


def test_sql_is_read_only_by_default(home, tmp_path):
    part = next(p for p in (home / "tables" / "images").glob("part-*.parquet") if "schema" not in p.name)
    attempts = {
        f"COPY (SELECT * FROM images WHERE false) TO '{part}'": "COPY statements need --write",
        "ATTACH 'other.duckdb' AS o": "ATTACH statements need --write",
        f"ATTACH '{home / 'warehouse.duckdb'}' AS w; DROP VIEW w.images": "need --write",
        "INSTALL httpfs": "need --write",
        "SET enable_external_access = true": "SET statements need --write",
        "SELECT * FROM read_csv('/etc/passwd')": "disabled by configuration",
        f"SELECT * FROM read_text('{home}/../../../../etc/passwd')": "disabled by configuration",
    }
    for query, message in attempts.items():
        line = _one_line_error(_ferlab(home, "sql", query))
        assert message in line, (query, line)
        assert "root:" not in line  # no byte of the outside file
    assert _ferlab(home, "sql", "SELECT count(*) AS n FROM images").stdout.split() == ["n", "8"]
    # Nothing was written: the images part is whole, the catalog file still has its views.
    assert Warehouse(home).count("images") == 8
    import duckdb

    assert duckdb.connect(str(home / "warehouse.duckdb"), read_only=True).sql(
        "SELECT count(*) FROM images"
    ).fetchall() == [(8,)]


def test_sql_write_is_explicit(home, tmp_path):
    out = tmp_path / "export.csv"
    proc = _ferlab(home, "sql", "--write", f"COPY (SELECT image_id FROM images) TO '{out}'")
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 9


def test_sql_errors_and_a_closed_pipe(home):
    assert "SQL: Parser Error" in _one_line_error(_ferlab(home, "sql", "SELEC 1"))
    assert "SQL: Catalog Error" in _one_line_error(_ferlab(home, "sql", "SELECT * FROM nope"))
    query = "SELECT * FROM range(200000)"
    cmd = f"{shlex.join([*FERLAB, '--home', str(home), 'sql', query])} | head -2"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert proc.stdout.split() == ["range", "0"]
    assert proc.stderr == "" and proc.returncode == 0, proc.stderr


def test_debug_shows_the_traceback(home):
    plain = _one_line_error(_ferlab(home, "sql", "SELEC 1"))
    debug = _ferlab(home, "--debug", "sql", "SELEC 1")
    assert "Traceback" in debug.stderr and plain in debug.stderr


def _in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True)


@pytest.fixture
def mount_ns(tmp_path):
    if not shutil.which("unshare") or _in_mount_namespace(f"mount -t tmpfs none {tmp_path}").returncode:
        pytest.skip("needs unshare -m and mount (root in a sandbox)")
    return tmp_path


def test_a_read_only_data_root_is_refused_before_the_input_is_read(mount_ns):
    root = mount_ns / "fs"
    root.mkdir()
    csv = write_fer2013_sample(mount_ns / "fer.csv", rows=5, faces=False)
    ferlab = shlex.join([*FERLAB, "--home", str(root / "home")])
    proc = _in_mount_namespace(
        f"set -e; mount -t tmpfs -o size=8m none {root}; {ferlab} sql 'SELECT 1' >/dev/null; "
        f"mount -o remount,ro {root}; exec {ferlab} ingest fer2013 {shlex.quote(str(csv))}"
    )
    line = _one_line_error(proc)
    assert "read-only" in line and str(root / "home") in line, line
    # Reading still works on a read-only root.
    proc = _in_mount_namespace(
        f"set -e; mount -t tmpfs -o size=8m none {root}; {ferlab} sql 'SELECT 1' >/dev/null; "
        f"mount -o remount,ro {root}; exec {ferlab} sql 'SELECT count(*) AS n FROM images'"
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["n", "0"], proc.stderr


def test_a_full_disk_is_one_line(mount_ns):
    root = mount_ns / "fs"
    root.mkdir()
    csv = write_fer2013_sample(mount_ns / "fer.csv", rows=3000, faces=False)
    ferlab = shlex.join([*FERLAB, "--home", str(root / "home")])
    proc = _in_mount_namespace(
        f"set -e; mount -t tmpfs -o size=2m none {root}; exec {ferlab} ingest fer2013 {shlex.quote(str(csv))}"
    )
    line = _one_line_error(proc)
    assert "disk is full" in line and str(root / "home") in line, line
    assert not list((root / "home").rglob("*.tmp"))
