"""The warehouse's tables as they grow by many small appends, three ways, in one run:

- `parts`: the parts store without merging (every append a part for good: the store before
  compaction);
- `tiered`: the parts store as shipped (size-tiered merges, `warehouse.store.Compaction`);
- `delta`: Delta Lake through delta-rs (`deltalake`): each append a keyed MERGE (insert the rows
  whose key is new), `optimize.compact()` + a checkpoint every `--compact-every` appends, read by
  DuckDB through `to_pyarrow_dataset()`.

Each append is a batch of scraped-image rows keyed by a content hash, a third of them already
stored (a re-run), as `ferlab ingest scraped` writes them. At each checkpoint: the mean time of
the last appends, the time to open the table and count its rows (open + query, as `ferlab sql`
does), and the parts (data files) it reads. Prints one JSON object per line; needs
`pip install -e '.[bench]'` for `delta`.

    .venv/bin/python -m benchmarks.storage_layers [--appends 1000] [--rows 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from warehouse.schemas import IMAGES
from warehouse.store import Compaction, Warehouse


def batch(i: int, rows: int) -> pa.Table:
    """Rows of append `i`: `rows` new images and `rows // 3` of the previous append again."""
    keys = [f"{i}-{j}" for j in range(rows)] + [f"{i - 1}-{j}" for j in range(rows // 3)] * (i > 0)
    ids = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    n = len(ids)
    return pa.table(
        {
            "image_id": ids,
            "source": ["scraped"] * n,
            "source_uri": [f"/data/scrape/batch-{i}/{k}.jpg" for k in keys],
            "subject": pa.nulls(n, pa.string()),
            "video_id": pa.nulls(n, pa.string()),
            "frame_index": pa.nulls(n, pa.int32()),
            "split": pa.nulls(n, pa.string()),
            "batch": [f"batch-{i}"] * n,
            "width": np.full(n, 640, np.int32),
            "height": np.full(n, 480, np.int32),
            "media_path": [f"media/{h[:2]}/{h}.jpg" for h in ids],
            "phash": pa.array(np.arange(n, dtype=np.uint64)),
        },
        schema=IMAGES,
    )


class PartsStore:
    def __init__(self, root: Path, compaction: Compaction):
        self.root, self.compaction = root, compaction
        self.wh = Warehouse(root, compaction=compaction)

    def append(self, rows: pa.Table) -> None:
        self.wh.append("images", rows)

    def open_and_count(self) -> int:
        return Warehouse(self.root, writable=False, compaction=self.compaction).count("images")

    def parts(self) -> int:
        return len(self.wh.live_parts("images")) - 1  # the empty schema part aside


class DeltaStore:
    def __init__(self, root: Path, compact_every: int):
        from deltalake import write_deltalake

        self.path, self.compact_every, self.appends = str(root / "images"), compact_every, 0
        write_deltalake(self.path, IMAGES.empty_table())

    def append(self, rows: pa.Table) -> None:
        from deltalake import DeltaTable

        table = DeltaTable(self.path)
        (
            table.merge(rows, predicate="t.image_id = s.image_id", source_alias="s", target_alias="t")
            .when_not_matched_insert_all()
            .execute()
        )
        self.appends += 1
        if self.appends % self.compact_every == 0:
            table = DeltaTable(self.path)
            table.optimize.compact()
            table.create_checkpoint()

    def open_and_count(self) -> int:
        from deltalake import DeltaTable

        with duckdb.connect() as con:
            con.register("images", DeltaTable(self.path).to_pyarrow_dataset())
            return con.sql("SELECT count(*) FROM images").fetchall()[0][0]

    def parts(self) -> int:
        from deltalake import DeltaTable

        return len(DeltaTable(self.path).file_uris())


def run(layer: str, store, appends: int, rows: int, checkpoints: list[int]) -> list[dict]:
    out, times = [], []
    for i in range(appends):
        start = time.perf_counter()
        store.append(batch(i, rows))
        times.append(time.perf_counter() - start)
        if i + 1 in checkpoints:
            queries = []
            for _ in range(5):
                start = time.perf_counter()
                count = store.open_and_count()
                queries.append(time.perf_counter() - start)
            assert count == (i + 1) * rows, f"{layer}: {count} rows after {i + 1} appends"
            out.append(
                {
                    "layer": layer,
                    "appends": i + 1,
                    "rows": count,
                    "append_s": round(statistics.mean(times[-20:]), 4),
                    "open_count_s": round(statistics.median(queries), 4),
                    "parts": store.parts(),
                    "total_append_s": round(sum(times), 2),
                }
            )
            print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=256, help="new rows per append")
    parser.add_argument("--compact-every", type=int, default=50, help="delta: appends between compactions")
    parser.add_argument("--layers", default="parts,tiered,delta")
    args = parser.parse_args()
    checkpoints = sorted(
        {c for c in (10, 30, 100, 300, 1000, 3000, 10000) if c < args.appends} | {args.appends}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers.split(","):
            root = Path(tmp) / layer
            if layer == "parts":
                store = PartsStore(root, Compaction(fanout=1 << 30))
            elif layer == "tiered":
                store = PartsStore(root, Compaction())
            else:
                store = DeltaStore(root, args.compact_every)
            run(layer, store, args.appends, args.rows, checkpoints)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
