"""In-process query timings on a data root (what a library caller pays, without the CLI's
start), and the near-duplicate check against the planted pairs. Prints one JSON object.

    python -m benchmarks.scale.probe HOME [--repeat 3] [--manifest M --upto N]

Per query: `call_s`, the median of `Warehouse.sql(q)` (a fresh connection and its views, then
the query: one library call) and `warm_s`, the median on one open connection (the query alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# Typical questions asked of the warehouse (the same through `ferlab sql`).
QUERIES = {
    "count": "SELECT source, count(*) AS n FROM images GROUP BY source ORDER BY source",
    "join": (
        "SELECT i.source, coalesce(l.emotion, '-') AS emotion, count(*) AS faces, avg(c.face_px) AS face_px "
        "FROM images i JOIN crops c ON c.image_id = i.image_id "
        "LEFT JOIN emotion_labels l ON l.image_id = i.image_id GROUP BY ALL ORDER BY ALL"
    ),
    "au": (
        "SELECT au, avg(intensity) AS mean_intensity, sum(present::INT) AS present FROM au_labels "
        "GROUP BY au ORDER BY au"
    ),
    "lookup": "SELECT * FROM images WHERE image_id = (SELECT max(image_id) FROM images WHERE source = 'scraped')",
}


def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def near_duplicate_check(wh, manifest: Path, upto: int | None) -> dict:
    """The near_duplicates rows against the planted (copy, original) pairs of the generator."""
    from benchmarks.scale.generators import planted_pairs

    start = time.perf_counter()
    found = wh.sql("SELECT image_id, duplicate_of FROM near_duplicates").to_pylist()
    query_s = time.perf_counter() - start
    pairs = {(r["image_id"], r["duplicate_of"]) for r in found}
    pairs |= {(b, a) for a, b in pairs}
    planted = planted_pairs(manifest, upto)
    hit = sum(1 for p in planted if p in pairs)
    return {
        "query_s": round(query_s, 4),
        "pairs": len(found),
        "planted": len(planted),
        "found_planted": hit,
        "missed": len(planted) - hit,
        "extra": len(found) - hit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("home", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--manifest", type=Path, help="the scraped drop's folder (its manifest.jsonl)")
    parser.add_argument("--upto", type=int, help="only the pairs planted among the first N images")
    parser.add_argument("--skip-queries", action="store_true")
    args = parser.parse_args()

    from warehouse import Warehouse

    start = time.perf_counter()
    wh = Warehouse(args.home, writable=False)
    result: dict = {"open_s": round(time.perf_counter() - start, 4), "queries": {}}
    if not args.skip_queries:
        for name, q in QUERIES.items():
            call_s, table = _median_time(lambda q=q: wh.sql(q), args.repeat)
            with wh.connect() as con:
                con.sql(q).fetchall()  # the first run pays the file reads
                warm_s, _ = _median_time(lambda q=q, con=con: con.sql(q).fetchall(), args.repeat)
            result["queries"][name] = {
                "call_s": round(call_s, 4),
                "warm_s": round(warm_s, 4),
                "rows": table.num_rows,
            }
    if args.manifest:
        result["near_duplicates"] = near_duplicate_check(wh, args.manifest, args.upto)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
