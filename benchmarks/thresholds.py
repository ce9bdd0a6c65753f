"""Threshold selection speed (`models.metrics.choose_thresholds`, one sort per label and cumulative
counts) against the loop it replaces (F1 recomputed at every distinct score), on the same random
scores; both must pick thresholds of the same F1. Prints one JSON object.

    .venv/bin/python -m benchmarks.thresholds [--rows 10000] [--labels 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from models.metrics import choose_thresholds


def loop_thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The baseline: try every distinct score of every label as a cut."""
    out = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        best = -1.0
        for cut in np.unique(p[:, j])[::-1]:
            predicted = p[:, j] >= cut
            tp = np.sum(predicted & y[:, j])
            f1 = 2 * tp / (predicted.sum() + y[:, j].sum())
            if f1 > best:
                best, out[j] = f1, cut
    return out


def f1_at(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    predicted = p >= t
    return 2 * (predicted & y).sum(0) / (predicted.sum(0) + y.sum(0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.random((args.rows, args.labels)) < 0.2
    p = np.clip(y * 0.15 + rng.random(y.shape), 0, 1).astype(np.float32)

    start = time.perf_counter()
    fast = choose_thresholds(y, p)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = loop_thresholds(y, p)
    slow_s = time.perf_counter() - start
    same = bool(np.allclose(f1_at(y, p, fast), f1_at(y, p, slow)))
    print(
        json.dumps(
            {
                "benchmark": "thresholds",
                "machine": platform.processor() or platform.machine(),
                "rows": args.rows,
                "labels": args.labels,
                "choose_thresholds_s": round(fast_s, 4),
                "loop_baseline_s": round(slow_s, 3),
                "speedup": round(slow_s / fast_s, 1),
                "same_f1": same,
            }
        )
    )
    if not same:
        raise SystemExit("choose_thresholds and the loop disagree")


if __name__ == "__main__":
    main()
