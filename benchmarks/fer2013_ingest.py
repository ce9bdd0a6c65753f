"""FER-2013 ingest speed: parse alone and parse + store, against a naive pandas per-row
`str.split` parse of the same file. Prints one JSON object.

    .venv/bin/python -m benchmarks.fer2013_ingest [--rows 35887]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse
from warehouse.sources.fer2013 import ingest_fer2013, parse_fer2013


def naive_parse(path: Path) -> np.ndarray:
    """What a FER-2013 notebook usually does: one str.split per row."""
    df = pd.read_csv(path)
    return np.stack([np.array(s.split(), dtype=np.uint8).reshape(48, 48) for s in df["pixels"]])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=35_887, help="rows in the generated CSV (FER-2013 has 35,887)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_fer2013_sample(Path(tmp) / "fer2013.csv", rows=args.rows, faces=False, seed=1)
        baseline, t_naive = timed(naive_parse, csv)
        parsed, t_parse = timed(parse_fer2013, csv)
        assert np.array_equal(parsed.pixels, baseline), "fast parse disagrees with the naive parse"
        wh = Warehouse(Path(tmp) / "home")
        report, t_ingest = timed(ingest_fer2013, wh, csv, show_progress=False)
        _, t_reingest = timed(ingest_fer2013, wh, csv, show_progress=False)
        n = args.rows
        print(
            json.dumps(
                {
                    "benchmark": "fer2013_ingest",
                    "rows": n,
                    "csv_mb": round(csv.stat().st_size / 1e6, 1),
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "naive_parse_s": round(t_naive, 3),
                    "parse_s": round(t_parse, 3),
                    "parse_rows_per_s": round(n / t_parse),
                    "naive_rows_per_s": round(n / t_naive),
                    "parse_speedup_vs_naive": round(t_naive / t_parse, 2),
                    "ingest_s": round(t_ingest, 3),
                    "ingest_rows_per_s": round(n / t_ingest),
                    "ingest_under_5s": t_ingest < 5.0,
                    "reingest_s": round(t_reingest, 3),
                    "images_added": report.added.get("images", 0),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
