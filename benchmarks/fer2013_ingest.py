"""FER-2013 ingest speed against a naive pandas per-row `str.split` parse of the same file, in
one run: the whole `ferlab --home TMP ingest fer2013 CSV` process (start-up, parse, PNGs,
tables; a fresh data root each time) and, in this process, parse alone, ingest and re-ingest.
The naive parse and the CLI process alternate `--repeat` times, so a busy machine slows both
alike; the ratio is of their medians. Wall and CPU seconds (user + system, the CLI's from its
own rusage) are both printed: on a shared machine CPU time is the steadier of the two. Prints
one JSON object.

    .venv/bin/python -m benchmarks.fer2013_ingest [--rows 35887] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse
from warehouse.sources.fer2013 import ingest_fer2013, parse_fer2013

TARGET_RATIO = 0.5  # the whole CLI ingest in at most half the naive parse's time


def naive_parse(path: Path) -> np.ndarray:
    """What a FER-2013 notebook usually does: one str.split per row."""
    df = pd.read_csv(path)
    return np.stack([np.array(s.split(), dtype=np.uint8).reshape(48, 48) for s in df["pixels"]])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def timed_cpu(fn, *args, **kwargs):
    """fn's result, wall seconds and this process's CPU seconds (all its threads)."""
    cpu = _cpu()
    result, wall = timed(fn, *args, **kwargs)
    return result, wall, _cpu() - cpu


def ferlab_command() -> list[str]:
    """The installed `ferlab` script beside this interpreter, else `python -m ferlab`."""
    script = Path(sys.executable).with_name("ferlab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ferlab"]


def _peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (Linux VmHWM), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError, IndexError):
        return 0


def cli_ingest(home: Path, csv: Path) -> dict:
    """Run `ferlab --home HOME ingest fer2013 CSV` to its end: wall, CPU and peak memory.

    The peak is polled from /proc: the child's own rusage counts this process's memory too
    (Linux keeps the high-water mark of the memory the child started in)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*ferlab_command(), "--home", str(home), "ingest", "fer2013", str(csv)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        peak_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, _peak_kb(proc.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(
                f"ferlab ingest fer2013 failed ({proc.returncode}): {err.read().decode()[-2000:]}"
            )
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_mb": peak_kb / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=35_887, help="rows in the generated CSV (FER-2013 has 35,887)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="naive parse / CLI ingest pairs, alternated (medians reported)"
    )
    args = parser.parse_args()
    n = args.rows
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_fer2013_sample(Path(tmp) / "fer2013.csv", rows=n, faces=False, seed=1)
        naive_runs, cli_runs = [], []
        for i in range(args.repeat):
            baseline, wall, cpu = timed_cpu(naive_parse, csv)
            naive_runs.append({"wall_s": wall, "cpu_s": cpu})
            # Each run a new root, none deleted before the end: on ext4 without a journal, files
            # created just after many were deleted wait while the freshly freed inodes are skipped.
            cli_runs.append(cli_ingest(Path(tmp) / f"cli-home-{i}", csv))
        parsed, t_parse, cpu_parse = timed_cpu(parse_fer2013, csv)
        assert np.array_equal(parsed.pixels, baseline), "fast parse disagrees with the naive parse"
        wh = Warehouse(Path(tmp) / "home")
        report, t_ingest, cpu_ingest = timed_cpu(ingest_fer2013, wh, csv, show_progress=False)
        _, t_reingest, cpu_reingest = timed_cpu(ingest_fer2013, wh, csv, show_progress=False)

        def median(runs: list[dict], key: str) -> float:
            return round(statistics.median(r[key] for r in runs), 3)

        naive_wall, cli_wall = median(naive_runs, "wall_s"), median(cli_runs, "wall_s")
        ratio = cli_wall / naive_wall
        print(
            json.dumps(
                {
                    "benchmark": "fer2013_ingest",
                    "rows": n,
                    "csv_mb": round(csv.stat().st_size / 1e6, 1),
                    "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "machine": platform.machine(),
                    "naive_parse_wall_s": naive_wall,
                    "naive_parse_cpu_s": median(naive_runs, "cpu_s"),
                    "cli_ingest_wall_s": cli_wall,
                    "cli_ingest_cpu_s": median(cli_runs, "cpu_s"),
                    "cli_ingest_user_s": median(cli_runs, "user_s"),
                    "cli_ingest_sys_s": median(cli_runs, "sys_s"),
                    "cli_ingest_peak_mb": round(max(r["peak_mb"] for r in cli_runs)),
                    "cli_vs_naive_wall_ratio": round(ratio, 3),
                    "cli_vs_naive_cpu_ratio": round(
                        median(cli_runs, "cpu_s") / median(naive_runs, "cpu_s"), 3
                    ),
                    f"cli_within_{TARGET_RATIO}x_naive": ratio <= TARGET_RATIO,
                    "runs": {
                        "naive_wall_s": [round(r["wall_s"], 3) for r in naive_runs],
                        "cli_wall_s": [round(r["wall_s"], 3) for r in cli_runs],
                    },
                    "parse_s": round(t_parse, 3),
                    "parse_cpu_s": round(cpu_parse, 3),
                    "parse_rows_per_s": round(n / t_parse),
                    "ingest_s": round(t_ingest, 3),
                    "ingest_cpu_s": round(cpu_ingest, 3),
                    "ingest_rows_per_s": round(n / t_ingest),
                    "reingest_s": round(t_reingest, 3),
                    "reingest_cpu_s": round(cpu_reingest, 3),
                    "images_added": report.added.get("images", 0),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
