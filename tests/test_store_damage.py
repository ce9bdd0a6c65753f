"""Issue 9, points 10 and 11: a damaged Parquet part is quarantined (recorded, other parts and
tables still read, `ferlab doctor` finds and repairs), a 0-byte schema part is regenerated,
stale temp files of killed writers are found, and a data root whose path holds a quote works.
Issue 21, points 5 and 9a: a part off its table's contract (a missing column, a column of another
type, a foreign Parquet file) is quarantined as a `schema_mismatch` when the warehouse opens and
listed by `ferlab doctor`; `doctor --repair` rebuilds a table folder that was replaced by a file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse
from warehouse.sources.fer2013 import ingest_fer2013


def _ferlab(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferlab", "--home", str(home), *args], capture_output=True, text=True
    )


def _image_parts(wh: Warehouse) -> list[Path]:
    return [p for p in wh.parts("images") if p.name != "part-0-schema.parquet"]


@pytest.fixture
def two_ingests(tmp_path):
    """A data root with two FER-2013 ingests: two parts in images and in emotion_labels."""
    wh = Warehouse(tmp_path / "home")
    for i, rows in enumerate((6, 4)):
        csv = write_fer2013_sample(tmp_path / f"fer{i}.csv", rows=rows, faces=False, seed=i)
        ingest_fer2013(wh, csv, show_progress=False)
    assert wh.count("images") == 10
    return wh, tmp_path


def test_a_truncated_part_is_quarantined_and_the_rest_still_reads(two_ingests):
    wh, tmp_path = two_ingests
    small = min(_image_parts(wh), key=lambda p: pq_rows(p))
    data = small.read_bytes()
    small.write_bytes(data[: len(data) // 2])

    wh = Warehouse(wh.home)
    assert wh.count("images") == 10 - pq_rows_of(data)  # the other part reads
    assert wh.count("emotion_labels") == 10  # other tables are untouched
    rejects = wh.sql(
        "SELECT source_uri, reason, detail FROM rejects WHERE reason = 'damaged_part'"
    ).to_pylist()
    assert len(rejects) == 1 and rejects[0]["source_uri"] == str(small)
    assert "quarantine/tables/images/" in rejects[0]["detail"]
    assert not small.exists() and (wh.home / "quarantine" / "tables" / "images" / small.name).exists()

    # Re-running the ingestion that wrote it restores its rows.
    ingest_fer2013(wh, tmp_path / "fer1.csv", show_progress=False)
    ingest_fer2013(wh, tmp_path / "fer0.csv", show_progress=False)
    assert wh.count("images") == 10


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def pq_rows_of(data: bytes) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(pa.BufferReader(data)).num_rows


def test_ingest_and_version_after_damage_give_no_traceback(two_ingests):
    wh, tmp_path = two_ingests
    part = _image_parts(wh)[0]
    part.write_bytes(b"PAR1 this is not a parquet file")
    ingest = _ferlab(wh.home, "ingest", "fer2013", str(tmp_path / "fer0.csv"))
    assert ingest.returncode == 0, ingest.stderr
    assert "Traceback" not in ingest.stderr
    version = _ferlab(wh.home, "version")
    assert version.returncode == 0 and "Traceback" not in version.stderr, version.stderr


def test_a_zero_byte_schema_part_is_written_again(wh):
    schema_part = wh.table_dir("crops") / "part-0-schema.parquet"
    schema_part.write_bytes(b"")
    wh = Warehouse(wh.home)
    assert wh.count("crops") == 0
    assert schema_part.stat().st_size > 0


def test_doctor_lists_then_repairs(two_ingests):
    wh, _ = two_ingests
    part = _image_parts(wh)[0]
    part.write_bytes(part.read_bytes()[:100])
    (wh.table_dir("crops") / "part-0-schema.parquet").write_bytes(b"")
    stale = wh.media_dir / "ab" / ".abcdef.999999999-1.tmp"  # a pid that cannot be alive
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a file")
    live = wh.media_dir / "ab" / f".abcdef.{os.getpid()}-1.tmp"  # a writer still at work
    live.write_bytes(b"being written")

    found = _ferlab(wh.home, "doctor")
    assert found.returncode == 1, found.stdout + found.stderr
    assert str(part) in found.stdout and "crops" in found.stdout and str(stale) in found.stdout
    assert str(live) not in found.stdout
    assert part.exists() and stale.exists()  # nothing changed without --repair

    repaired = _ferlab(wh.home, "doctor", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert not part.exists() and not stale.exists() and live.exists()
    again = _ferlab(wh.home, "doctor")
    assert again.returncode == 0 and "every table part reads" in again.stdout
    assert "in quarantine" in again.stdout


def test_doctor_deep_check_finds_a_damaged_page(tmp_path):
    wh = Warehouse(tmp_path / "home")
    n = 2000
    rows = pa.table(
        {
            "image_id": [f"{i:064x}" for i in range(n)],
            "emotion": ["happy"] * n,
            "label_source": ["gold"] * n,
            "confidence": pa.array([0.5] * n, pa.float32()),
            "annotator": [f"a{i}" for i in range(n)],
        }
    )
    wh.append("emotion_labels", rows)
    part = next(p for p in wh.parts("emotion_labels") if "schema" not in p.name)
    data = bytearray(part.read_bytes())
    for i in range(200, 600):  # inside the first data page; the footer stays intact
        data[i] ^= 0x5A
    part.write_bytes(bytes(data))
    assert not wh.doctor(deep=False).damaged_parts
    assert [p for p, _ in wh.doctor(deep=True).damaged_parts] == [str(part)]


def test_a_data_root_whose_path_holds_a_quote(tmp_path):
    home = tmp_path / "o'brien's data"
    csv = write_fer2013_sample(tmp_path / "fer.csv", rows=5, faces=False)
    ingest = _ferlab(home, "ingest", "fer2013", str(csv))
    assert ingest.returncode == 0, ingest.stderr
    sql = _ferlab(home, "sql", "SELECT count(*) AS n FROM images")
    assert sql.returncode == 0 and sql.stdout.split() == ["n", "5"], sql.stderr
    version = _ferlab(home, "version")
    assert version.returncode == 0, version.stderr
    wh = Warehouse(home)
    wh.write_catalog()
    import duckdb

    assert duckdb.connect(str(wh.catalog_path), read_only=True).sql(
        "SELECT count(*) FROM images"
    ).fetchall() == [(5,)]


def _label_part(wh: Warehouse) -> Path:
    """The emotion_labels part of the first (6-row) ingest of `two_ingests`."""
    return max((p for p in wh.parts("emotion_labels") if p.name != "part-0-schema.parquet"), key=pq_rows)


def _schema_rejects(wh: Warehouse) -> list[dict]:
    return wh.sql(
        "SELECT source_uri, detail FROM rejects WHERE reason = 'schema_mismatch' ORDER BY source_uri"
    ).to_pylist()


def test_a_part_missing_a_column_is_quarantined_and_a_reingest_does_not_double_labels(two_ingests):
    wh, tmp_path = two_ingests
    part = _label_part(wh)
    pq.write_table(pq.read_table(part).drop_columns(["annotator"]), part)  # a writer that lost a column

    wh = Warehouse(wh.home)
    for i in (0, 1):  # re-running the ingestions restores the rows, once each
        ingest_fer2013(wh, tmp_path / f"fer{i}.csv", show_progress=False)
    assert wh.count("emotion_labels_history") == 10
    assert (
        wh.sql("SELECT count(*) FROM emotion_labels_history WHERE annotator IS NULL").column(0)[0].as_py()
        == 0
    )
    rejects = _schema_rejects(wh)
    assert [r["source_uri"] for r in rejects] == [str(part)]
    assert "missing column annotator" in rejects[0]["detail"], rejects
    assert "quarantine/tables/emotion_labels/" in rejects[0]["detail"]
    assert not part.exists() and (wh.quarantine_dir / "tables" / "emotion_labels" / part.name).exists()


def _store_confidence_as_text(part) -> None:
    """Rewrite a label part with its `confidence` column as strings (off the contract's float)."""
    rows = pq.read_table(part)
    i = rows.schema.get_field_index("confidence")
    pq.write_table(rows.set_column(i, "confidence", rows.column(i).cast(pa.string())), part)


def test_a_column_of_another_type_is_quarantined_and_the_view_keeps_its_type(two_ingests):
    wh, _ = two_ingests
    part = _label_part(wh)
    _store_confidence_as_text(part)

    wh = Warehouse(wh.home)
    types = wh.sql("SELECT DISTINCT typeof(confidence) AS t FROM emotion_labels_history").column("t")
    assert types.to_pylist() == ["FLOAT"]
    rejects = _schema_rejects(wh)
    assert [r["source_uri"] for r in rejects] == [str(part)]
    assert "column confidence is string, expected float" in rejects[0]["detail"], rejects


def test_a_foreign_parquet_file_in_a_table_folder_adds_no_rows(two_ingests):
    wh, _ = two_ingests
    foreign = wh.table_dir("images") / "notes.parquet"
    pq.write_table(pa.table({"note": ["not an image"], "n": [1]}), foreign)

    wh = Warehouse(wh.home)
    assert wh.count("images") == 10
    assert wh.sql("SELECT count(*) FROM images WHERE image_id IS NULL").column(0)[0].as_py() == 0
    rejects = _schema_rejects(wh)
    assert [r["source_uri"] for r in rejects] == [str(foreign)]
    assert "missing columns image_id, source" in rejects[0]["detail"], rejects
    assert "extra columns note, n" in rejects[0]["detail"], rejects
    assert "note" not in wh.read("images").column_names


def test_a_read_only_open_leaves_a_mismatched_part_in_place_and_out_of_the_views(two_ingests):
    wh, _ = two_ingests
    part = _label_part(wh)
    pq.write_table(pq.read_table(part).drop_columns(["annotator"]), part)
    ro = Warehouse(wh.home, writable=False)
    assert ro.count("emotion_labels") == 4
    assert part.exists() and not wh.quarantine_dir.exists()


def test_doctor_lists_a_schema_mismatch_then_repairs(two_ingests):
    wh, _ = two_ingests
    part = _label_part(wh)
    _store_confidence_as_text(part)

    found = _ferlab(wh.home, "doctor")
    assert found.returncode == 1, found.stdout + found.stderr
    line = next((ln for ln in found.stdout.splitlines() if str(part) in ln), "")
    assert "schema mismatch" in line and "column confidence is string, expected float" in line, found.stdout
    assert part.exists()  # nothing moved without --repair

    repaired = _ferlab(wh.home, "doctor", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert not part.exists()
    again = _ferlab(wh.home, "doctor")
    assert again.returncode == 0, again.stdout + again.stderr
    listed = next((ln for ln in again.stdout.splitlines() if part.name in ln), "")
    assert listed.startswith("in quarantine:") and "schema_mismatch" in listed, again.stdout


def test_doctor_repair_rebuilds_a_table_folder_replaced_by_a_file(two_ingests):
    wh, _ = two_ingests
    folder = wh.table_dir("crops")
    shutil.rmtree(folder)
    folder.write_bytes(b"a file where the crops folder was")

    found = _ferlab(wh.home, "doctor")
    assert found.returncode == 1, found.stdout + found.stderr
    assert [ln for ln in found.stdout.splitlines() if str(folder) in ln], found.stdout

    repaired = _ferlab(wh.home, "doctor", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "Traceback" not in repaired.stderr
    lines = [ln for ln in repaired.stdout.splitlines() if str(folder) in ln and "quarantine" in ln]
    assert len(lines) == 1 and "file" in lines[0] and "rebuilt" in lines[0], repaired.stdout
    assert folder.is_dir() and (folder / "part-0-schema.parquet").exists()
    moved = [p for p in wh.quarantine_dir.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in moved] == [b"a file where the crops folder was"]
    again = _ferlab(wh.home, "doctor")
    assert again.returncode == 0, again.stdout + again.stderr
    assert Warehouse(wh.home).count("images") == 10
