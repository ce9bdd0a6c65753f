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


# ---- issue 21, point 5: every part is checked against its table's contract when the warehouse opens
def _write_raw_part(wh: Warehouse, table: str, rows: pa.Table, name: str) -> Path:
    """Rows written straight into a table's folder, past the store (an outside or older writer)."""
    import pyarrow.parquet as pq

    part = wh.table_dir(table) / f"part-{name}.parquet"
    pq.write_table(rows, part)
    return part


def test_an_open_reads_only_the_footers_that_changed(wh, monkeypatch):
    import warehouse.store as store

    for i in range(5):
        wh.append("emotion_labels", _labels([f"x{i}"]))
    Warehouse(wh.home)  # checks the new parts and remembers them
    reads = []
    real = store._read_footer
    monkeypatch.setattr(store, "_read_footer", lambda path: reads.append(path) or real(path))
    Warehouse(wh.home)
    assert reads == []
    wh.append("emotion_labels", _labels(["y"]))
    Warehouse(wh.home)
    assert [p.parent.name for p in reads] == ["emotion_labels"]
    reads.clear()
    # Another contract for the table (a column added, a check changed): its parts are read again.
    monkeypatch.setitem(store._CONTRACT_IDS, "emotion_labels", "another contract")
    Warehouse(wh.home)
    assert len(reads) == 6 and {p.parent.name for p in reads} == {"emotion_labels"}


def test_a_part_written_before_optional_columns_existed_is_kept(wh):
    """Schema evolution: a label part without the columns added later (`optional` ones and the
    write stamp) reads them as null; a part without any other column is off the contract."""
    from warehouse.schemas import EMOTION_LABELS

    old = pa.schema(
        [
            f
            for f in EMOTION_LABELS
            if f.name not in ("recorded_at", "crop_id", "threshold", "calibration", "verified")
        ]
    )
    kept = _write_raw_part(wh, "emotion_labels", _labels(["old"]).select(old.names).cast(old), "old")
    no_emotion = wh.conform("emotion_labels", _labels(["bad"])).drop_columns(["emotion"])
    dropped = _write_raw_part(wh, "emotion_labels", no_emotion, "no-emotion")
    wh = Warehouse(wh.home)
    assert kept.exists() and not dropped.exists()
    assert wh.sql("SELECT image_id, crop_id FROM emotion_labels").to_pylist() == [
        {"image_id": "old", "crop_id": None}
    ]
    rejects = wh.sql("SELECT source_uri, detail FROM rejects WHERE reason = 'schema_mismatch'").to_pylist()
    assert [r["source_uri"] for r in rejects] == [str(dropped)]
    assert rejects[0]["detail"].startswith("missing column emotion;"), rejects


def test_a_quarantined_part_off_the_contract_is_still_named_by_schema_mismatches(wh):
    """The ingest assets' blocking `schema_matches_contract` check reads `schema_mismatches()`: a
    part quarantined by an open stays named there until someone clears it from quarantine/."""
    rows = wh.conform("emotion_labels", _labels(["a"]))
    retyped = rows.set_column(
        rows.schema.get_field_index("annotator"), "annotator", pa.array([7], pa.int64())
    )
    part = _write_raw_part(wh, "emotion_labels", retyped, "foreign")
    wh = Warehouse(wh.home)
    assert not part.exists()
    problems = wh.schema_mismatches()
    assert len(problems) == 1 and part.name in problems[0] and "quarantine" in problems[0], problems
    assert "column annotator is int64, expected string" in problems[0]
    for moved in (wh.quarantine_dir / "tables" / "emotion_labels").iterdir():
        moved.unlink()
    assert wh.schema_mismatches() == []


def test_a_part_with_nulls_in_a_key_column_is_off_the_contract(wh):
    rows = wh.conform("emotion_labels", _labels(["a", "b"]))
    nullable = pa.schema([f.with_nullable(True) for f in rows.schema])
    with_null = rows.cast(nullable).set_column(
        rows.schema.get_field_index("annotator"), "annotator", pa.array(["t", None], pa.string())
    )
    part = _write_raw_part(wh, "emotion_labels", with_null, "nulls")
    wh = Warehouse(wh.home)
    assert not part.exists() and wh.count("emotion_labels") == 0
    detail = wh.sql("SELECT detail FROM rejects WHERE reason = 'schema_mismatch'").column(0)[0].as_py()
    assert detail.startswith("column annotator holds 1 null, expected none;"), detail


def test_a_writable_open_moves_a_file_standing_where_the_tables_folder_belongs(wh):
    import shutil

    wh.append("emotion_labels", _labels(["a"]))
    shutil.rmtree(wh.tables_dir)
    wh.tables_dir.write_bytes(b"not a folder")
    assert Warehouse(wh.home, writable=False).count("emotion_labels") == 0  # reads, as empty
    wh = Warehouse(wh.home)
    assert wh.tables_dir.is_dir() and wh.count("emotion_labels") == 0
    assert [r[0] for r in wh.opening_repairs] == ["not_a_folder"]
    rejects = wh.sql("SELECT source_uri, detail FROM rejects WHERE reason = 'not_a_folder'").to_pylist()
    assert [r["source_uri"] for r in rejects] == [str(wh.tables_dir)]
    assert "moved to quarantine/tables.not-a-folder-" in rejects[0]["detail"]
    assert wh.append("emotion_labels", _labels(["a"])) == 1


def test_processes_opening_one_data_root_at_once_do_not_trip_on_each_others_write_probe(tmp_path):
    """Three runs of a fresh data root opened it at once (the dask test): each wrote and removed the
    same probe file, and one found it gone ("No such file or directory: .write-probe.tmp")."""
    import multiprocessing

    Warehouse(tmp_path / "home")  # the tables made once; the opens below race on the probe only
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        opened = pool.map(_open_many_times, [str(tmp_path / "home")] * 4)
    assert opened == [30] * 4


def _open_many_times(home: str) -> int:
    for _ in range(30):
        Warehouse(home)
    return 30
