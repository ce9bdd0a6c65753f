from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse
from warehouse.rejects import Reject
from warehouse.store import SchemaError


def _labels(ids, emotion="happy"):
    n = len(ids)
    return pa.table(
        {
            "image_id": ids,
            "emotion": [emotion] * n,
            "label_source": ["gold"] * n,
            "confidence": [None] * n,
            "annotator": ["t"] * n,
        }
    )


def test_append_is_idempotent_and_keyed(wh):
    assert wh.append("emotion_labels", _labels(["a", "b", "a"])) == 2  # in-batch repeat dropped
    assert wh.append("emotion_labels", _labels(["a", "b"])) == 0
    assert wh.append("emotion_labels", _labels(["b", "c"])) == 1
    assert sorted(wh.read("emotion_labels").column("image_id").to_pylist()) == ["a", "b", "c"]


def test_rejects_dedup_ignores_time_seen(wh):
    r = Reject("fer2013", "/x.csv", "parse", "wrong_field_count", "2 fields", 7)
    assert wh.add_rejects([r]) == 1
    assert wh.add_rejects([r]) == 0
    assert wh.count("rejects") == 1


def test_schema_errors_are_clear(wh):
    with pytest.raises(SchemaError, match="missing columns \\['annotator'\\]"):
        wh.append("emotion_labels", _labels(["a"]).drop_columns(["annotator"]))
    with pytest.raises(SchemaError, match="not nullable"):
        wh.append("emotion_labels", _labels([None]))


def test_media_is_content_addressed(wh):
    a = wh.put_media(b"same bytes", "png")
    assert wh.put_media(b"same bytes", "png") == a
    assert wh.path(a).read_bytes() == b"same bytes"
    assert not list(wh.media_dir.rglob("*.tmp"))


def test_empty_tables_are_queryable_and_catalog_file_opens(wh):
    assert wh.count("images") == 0
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    assert con.execute("SELECT count(*) FROM au_labels").fetchall()[0][0] == 0
    assert {r[0] for r in con.sql("SHOW TABLES").fetchall()} >= {
        "images",
        "emotion_labels",
        "au_labels",
        "rejects",
    }


def _ingest_cmd(home: Path, csv: Path) -> list[str]:
    return [sys.executable, "-m", "ferlab", "--home", str(home), "ingest", "fer2013", str(csv)]


def _counts(home: Path) -> dict[str, int]:
    wh = Warehouse(home)
    return {t: wh.count(t) for t in ("images", "emotion_labels", "rejects")}


def test_killed_ingest_leaves_readable_warehouse_and_rerun_completes(tmp_path):
    csv = write_fer2013_sample(tmp_path / "fer.csv", rows=4000, faces=False, broken=True)
    reference = tmp_path / "reference"
    subprocess.run(_ingest_cmd(reference, csv), check=True, capture_output=True)
    expected = _counts(reference)
    assert expected["images"] == 4000

    home = tmp_path / "killed"
    proc = subprocess.Popen(_ingest_cmd(home, csv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    media = home / "media"
    while time.monotonic() < deadline and proc.poll() is None:
        if media.is_dir() and sum(1 for _ in media.rglob("*.png")) >= 500:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed midway"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _counts(home)["images"] < expected["images"]  # killed midway, and still readable
    subprocess.run(_ingest_cmd(home, csv), check=True, capture_output=True)
    assert _counts(home) == expected


def test_kill_between_table_writes_then_rerun_completes(tmp_path):
    """SIGKILL right after the images part lands, before its labels: the re-run adds only the labels."""
    csv = write_fer2013_sample(tmp_path / "fer.csv", rows=50, broken=True)
    home = tmp_path / "home"
    script = textwrap.dedent(
        f"""
        import os, signal
        from warehouse import Warehouse
        from warehouse.sources.fer2013 import ingest_fer2013
        original = Warehouse.append
        def append_then_die(self, name, rows):
            n = original(self, name, rows)
            if name == "images":
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        Warehouse.append = append_then_die
        ingest_fer2013(Warehouse({str(home)!r}), {str(csv)!r}, show_progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ)
    assert proc.returncode == -signal.SIGKILL
    assert _counts(home) == {"images": 50, "emotion_labels": 0, "rejects": 0}
    subprocess.run(_ingest_cmd(home, csv), check=True, capture_output=True)
    assert _counts(home) == {"images": 50, "emotion_labels": 50, "rejects": 6}
