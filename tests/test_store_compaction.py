"""Parts merge as tables grow: few parts, the same rows, whatever is killed or runs at once."""

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

from warehouse.store import Compaction, Warehouse

SMALL = Compaction(fanout=4, base_bytes=64 << 10, grace_s=3600)


def _labels(ids: list[str], emotion: str = "happy") -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "image_id": ids,
            "emotion": [emotion] * n,
            "label_source": ["gold"] * n,
            "confidence": pa.nulls(n, pa.float32()),
            "annotator": ["test"] * n,
        }
    )


def _ids(start: int, n: int) -> list[str]:
    return [f"img-{i:06d}" for i in range(start, start + n)]


def _data_parts(wh: Warehouse, table: str) -> list[Path]:
    return [p for p in wh.live_parts(table) if p.name != "part-0-schema.parquet"]


def _keys(wh: Warehouse) -> tuple[int, int]:
    """(rows, distinct keys) of the emotion_labels history."""
    return (
        wh.sql("SELECT count(*), count(DISTINCT image_id) FROM emotion_labels_history")
        .to_pylist()[0]
        .values()
    )


def test_parts_stay_few_and_the_rows_stay_the_same(tmp_path):
    wh = Warehouse(tmp_path / "home", compaction=SMALL)
    for i in range(100):
        wh.append("emotion_labels", _labels(_ids(i * 3, 3)))
    # size tiers 4x apart: at most fanout - 1 parts per tier
    assert len(_data_parts(wh, "emotion_labels")) <= 2 * (SMALL.fanout - 1)
    assert len(wh.parts("emotion_labels")) > 100  # the merged-away parts wait out their grace
    assert tuple(_keys(wh)) == (300, 300)
    assert wh.append("emotion_labels", _labels(_ids(0, 300))) == 0  # the key check sees merged rows

    wh.write_catalog()  # the file users open leaves replaced parts out too
    with duckdb.connect(str(wh.catalog_path), read_only=True) as con:
        assert con.sql("SELECT count(*), count(DISTINCT image_id) FROM emotion_labels").fetchall() == [
            (300, 300)
        ]


def test_a_full_compaction_leaves_one_part_and_the_grace_then_deletes_the_rest(tmp_path):
    wh = Warehouse(tmp_path / "home", compaction=Compaction(grace_s=0))
    for i in range(5):
        wh.append("emotion_labels", _labels(_ids(i * 10, 10)))
    wh.append_labels("emotion_labels", _labels(_ids(0, 5), emotion="sad"))  # a newer version of 5
    merges = wh.compact("emotion_labels", full=True)
    assert [(m.parts, m.rows) for m in merges] == [(6, 55)]
    wh.compact("emotion_labels")  # past the grace: the merged-away parts go
    assert [p.name for p in wh.parts("emotion_labels")] == ["part-0-schema.parquet", merges[0].into]
    rows = wh.sql("SELECT emotion, count(*) AS n FROM emotion_labels GROUP BY emotion ORDER BY emotion")
    assert rows.to_pylist() == [{"emotion": "happy", "n": 45}, {"emotion": "sad", "n": 5}]
    assert wh.count("emotion_labels_history") == 55


def test_a_connection_opened_before_a_merge_reads_on_unchanged(tmp_path):
    wh = Warehouse(tmp_path / "home", compaction=SMALL)
    for i in range(3):
        wh.append("emotion_labels", _labels(_ids(i * 5, 5)))
    with wh.connect() as con:
        Warehouse(tmp_path / "home", compaction=SMALL).compact("emotion_labels", full=True)
        assert con.sql("SELECT count(*) FROM emotion_labels").fetchall() == [(15,)]
    assert wh.count("emotion_labels") == 15
    assert len(_data_parts(wh, "emotion_labels")) == 1


def test_a_damaged_merged_part_gives_back_the_parts_it_replaced(tmp_path):
    home = tmp_path / "home"
    wh = Warehouse(home, compaction=SMALL)
    for i in range(3):
        wh.append("emotion_labels", _labels(_ids(i * 5, 5)))
    (merge,) = wh.compact("emotion_labels", full=True)
    merged = wh.table_dir("emotion_labels") / merge.into
    merged.write_bytes(merged.read_bytes()[:100])  # truncated
    wh = Warehouse(home, compaction=SMALL)  # the open's check quarantines it
    assert not merged.exists()
    assert tuple(_keys(wh)) == (15, 15)
    reasons = wh.sql("SELECT reason FROM rejects WHERE stage = 'storage'").column("reason").to_pylist()
    assert reasons == ["damaged_part"]


_WRITER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from warehouse.store import Compaction, Warehouse
    home, start, count, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    wh = Warehouse(home, compaction=Compaction(fanout=4, base_bytes=64 << 10, grace_s=3600))
    for i in range(start, start + count, step):
        ids = [f"img-{j:06d}" for j in range(i, i + step)]
        n = len(ids)
        wh.append("emotion_labels", pa.table({
            "image_id": ids, "emotion": ["happy"] * n, "label_source": ["gold"] * n,
            "confidence": pa.nulls(n, pa.float32()), "annotator": ["w"] * n}))
        print(i + step, flush=True)
    """
)


def _writer(home: Path, start: int, count: int, step: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(home), str(start), str(count), str(step)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_two_writers_and_a_reader_never_see_a_row_twice(tmp_path):
    """Two processes append overlapping keys while parts merge under them; a reader polling all
    along never sees a key twice or the count go down, and the end holds each key once."""
    home = tmp_path / "home"
    wh = Warehouse(home, compaction=SMALL)
    writers = [_writer(home, 0, 300, 5), _writer(home, 150, 300, 5)]  # keys 150..299 from both
    seen = []
    while any(w.poll() is None for w in writers):
        rows, keys = _keys(wh)
        assert rows == keys, "a key was read twice"
        seen.append(rows)
    for w in writers:
        w.communicate()
        assert w.returncode == 0
    assert seen == sorted(seen), "the count went down"
    assert tuple(_keys(wh)) == (450, 450)
    assert len(_data_parts(wh, "emotion_labels")) <= 3 * (SMALL.fanout - 1)
    assert len(seen) > 5  # the reader did read while the writers wrote


@pytest.mark.slow
def test_a_writer_killed_at_any_point_loses_nothing_it_reported(tmp_path):
    """SIGKILL a writer at several moments (mid-append, mid-merge); after each, the table holds
    every key it reported written, each once, and a re-run completes it."""
    home = tmp_path / "home"
    for delay in (0.7, 1.4):
        proc = _writer(home, 0, 800, 8)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        done = int(out.split()[-1]) if out.split() else 0
        wh = Warehouse(home, compaction=SMALL)
        rows, keys = _keys(wh)
        assert rows == keys and keys >= done
    proc = _writer(home, 0, 800, 8)
    proc.communicate()
    assert tuple(_keys(Warehouse(home, compaction=SMALL))) == (800, 800)


def test_doctor_compact_merges_every_table_into_one_part(tmp_path):
    home = tmp_path / "home"
    wh = Warehouse(home)
    for i in range(3):
        wh.append("emotion_labels", _labels(_ids(i * 5, 5)))
    ferlab = Path(sys.executable).with_name("ferlab")
    out = subprocess.run(
        [str(ferlab), "--home", str(home), "doctor", "--quick", "--compact"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "compacted emotion_labels: 3 parts, 15 rows -> part-m-" in out
    assert len(_data_parts(wh, "emotion_labels")) == 1
    assert wh.count("emotion_labels") == 15
