"""Issue 9, point 8: a label corrected at its source supersedes the stored one (history kept),
and the views, dataset versions and ingest reports see the newest."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse import Warehouse
from warehouse.schemas import AU_LABELS, EMOTION_LABELS


def _emotions(values: dict[str, str], confidence=None) -> pa.Table:
    n = len(values)
    return pa.table(
        {
            "image_id": list(values),
            "emotion": list(values.values()),
            "label_source": ["gold"] * n,
            "confidence": pa.array([confidence] * n, pa.float32()),
            "annotator": ["src"] * n,
        }
    )


def _aus(image_id: str, intensities: dict[int, float]) -> pa.Table:
    n = len(intensities)
    return pa.table(
        {
            "image_id": [image_id] * n,
            "au": pa.array(list(intensities), pa.int16()),
            "intensity": pa.array(list(intensities.values()), pa.float32()),
            "present": [v >= 2 for v in intensities.values()],
            "label_source": ["gold"] * n,
            "probability": pa.nulls(n, pa.float32()),
            "annotator": ["disfa"] * n,
        }
    )


def _emotion_of(wh: Warehouse) -> dict[str, str]:
    rows = wh.sql("SELECT image_id, emotion FROM emotion_labels").to_pylist()
    return {r["image_id"]: r["emotion"] for r in rows}


def test_a_changed_label_supersedes_and_history_stays(wh):
    first = wh.append_labels("emotion_labels", _emotions({"a": "happy", "b": "sad"}))
    assert (first.added, first.updated) == (2, 0)
    same = wh.append_labels("emotion_labels", _emotions({"a": "happy", "b": "sad"}))
    assert (same.added, same.updated) == (0, 0)  # re-running never duplicates
    fixed = wh.append_labels("emotion_labels", _emotions({"a": "angry", "b": "sad", "c": "fear"}))
    assert (fixed.added, fixed.updated) == (1, 1)
    assert _emotion_of(wh) == {"a": "angry", "b": "sad", "c": "fear"}
    history = wh.sql("SELECT emotion FROM emotion_labels_history WHERE image_id = 'a' ORDER BY recorded_at")
    assert history.column("emotion").to_pylist() == ["happy", "angry"]
    # Changing back is a change too (a new version, not a rewrite of the first part).
    back = wh.append_labels("emotion_labels", _emotions({"a": "happy"}))
    assert (back.added, back.updated) == (0, 1)
    assert _emotion_of(wh)["a"] == "happy"
    assert wh.count("emotion_labels_history") == 5
    assert wh.count("emotion_labels") == 3


def test_a_confidence_change_is_a_change_and_plain_append_counts_both(wh):
    assert wh.append("emotion_labels", _emotions({"a": "happy"}, 0.5)) == 1
    assert wh.append("emotion_labels", _emotions({"a": "happy"}, 0.5)) == 0
    assert wh.append("emotion_labels", _emotions({"a": "happy"}, 0.75)) == 1
    assert wh.sql("SELECT confidence FROM emotion_labels").column(0).to_pylist() == [0.75]


def test_au_intensities_edited_at_the_source(wh):
    assert wh.append_labels("au_labels", _aus("f1", {1: 0.0, 12: 3.0})).added == 2
    w = wh.append_labels("au_labels", _aus("f1", {1: 4.0, 12: 3.0}))
    assert (w.added, w.updated) == (0, 1)
    rows = wh.sql("SELECT au, intensity, present FROM au_labels ORDER BY au").to_pylist()
    assert rows == [
        {"au": 1, "intensity": 4.0, "present": True},
        {"au": 12, "intensity": 3.0, "present": True},
    ]


def test_a_warehouse_written_before_versioning_reads_and_migrates(tmp_path):
    home = tmp_path / "home"
    wh = Warehouse(home)
    # A part as the store wrote it before label tables had `recorded_at`, `crop_id`, `threshold`, `calibration`, `verified`.
    added = ("recorded_at", "crop_id", "threshold", "calibration", "verified")
    old_schema = pa.schema([f for f in EMOTION_LABELS if f.name not in added])
    old = _emotions({"a": "happy", "b": "sad"}).select(old_schema.names).cast(old_schema)
    pq.write_table(old, home / "tables" / "emotion_labels" / "part-old.parquet")
    old_au = pa.schema([f for f in AU_LABELS if f.name not in added])
    old_aus = _aus("f1", {1: 1.0}).select(old_au.names).cast(old_au)
    pq.write_table(old_aus, home / "tables" / "au_labels" / "part-old.parquet")
    # ... and its schema part, too
    pq.write_table(old_schema.empty_table(), home / "tables" / "emotion_labels" / "part-0-schema.parquet")

    wh = Warehouse(home)
    assert _emotion_of(wh) == {"a": "happy", "b": "sad"}
    assert wh.sql("SELECT count(*) FROM emotion_labels WHERE recorded_at IS NULL").column(0)[0].as_py() == 2
    w = wh.append_labels("emotion_labels", _emotions({"a": "surprise", "b": "sad"}))
    assert (w.added, w.updated) == (0, 1)
    assert _emotion_of(wh) == {"a": "surprise", "b": "sad"}
    assert wh.append_labels("au_labels", _aus("f1", {1: 1.0})).updated == 0
    stamped = wh.sql("SELECT recorded_at FROM emotion_labels WHERE image_id = 'a'").column(0)[0].as_py()
    assert stamped > dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    # the write migrated the old parts: the contract's columns, null where the old rows had none
    assert wh.schema_mismatches() == []
    assert pq.read_schema(home / "tables" / "au_labels" / "part-old.parquet").names == AU_LABELS.names
    assert wh.sql("SELECT count(*) FROM au_labels_history WHERE crop_id IS NULL").column(0)[0].as_py() == 1


def test_the_catalog_file_shows_the_newest_labels(wh):
    import duckdb

    wh.append_labels("emotion_labels", _emotions({"a": "happy"}))
    wh.append_labels("emotion_labels", _emotions({"a": "sad"}))
    wh.write_catalog()
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    assert con.sql("SELECT emotion FROM emotion_labels").fetchall() == [("sad",)]
    assert con.sql("SELECT count(*) FROM emotion_labels_history").fetchall() == [(2,)]
