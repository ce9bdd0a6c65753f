"""`make bench-scale`'s harness (benchmarks/scale): the growth fit on synthetic data, the scraped
generator's planted near-duplicates, and the whole harness at a tiny size (two levels of a few
dozen items per source, every stage but the student's training)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from benchmarks.scale.fit import fit_linear, fit_power, local_exponent, marginal_rate, project_memory
from benchmarks.scale.generators import plan_scraped, planted_pairs, write_scraped_drop


@pytest.mark.parametrize("exponent", [0.5, 1.0, 1.3, 2.0])
def test_power_fit_recovers_the_exponent(exponent):
    sizes = [1_000, 3_000, 10_000, 100_000]
    fit = fit_power(sizes, [0.002 * n**exponent for n in sizes])
    assert fit.exponent == pytest.approx(exponent)
    assert fit.coef == pytest.approx(0.002)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.at(1_000_000) == pytest.approx(0.002 * 1e6**exponent)
    assert local_exponent(sizes, [0.002 * n**exponent for n in sizes]) == pytest.approx(exponent)


def test_power_fit_with_noise_and_a_fixed_start():
    rng = np.random.default_rng(0)
    sizes = [10_000, 30_000, 100_000]
    noisy = [2.0 * n**1.05 * math.exp(rng.normal(0, 0.03)) for n in sizes]
    assert fit_power(sizes, noisy).exponent == pytest.approx(1.05, abs=0.08)
    # a process start of 3 s flattens the fit: the local exponent sees through it better
    started = [3.0 + n / 1000 for n in sizes]
    assert fit_power(sizes, started).exponent < local_exponent(sizes, started) < 1.0
    assert marginal_rate(sizes, started) == pytest.approx(1000)
    assert fit_power([5, 5], [1, 2]) is None and fit_power([1], [1]) is None


def test_memory_projection_is_base_plus_per_item():
    sizes = [10_000, 30_000, 100_000]
    peaks = [300 + 0.002 * n for n in sizes]  # MB
    assert fit_linear(sizes, peaks) == pytest.approx((300, 0.002))
    assert project_memory(sizes, peaks, 1_000_000) == pytest.approx(2300, rel=0.01)
    assert project_memory(sizes, [500, 500, 500], 1_000_000) == pytest.approx(500)


def test_scraped_plan_is_prefix_closed_at_the_planted_rate():
    plan = plan_scraped(20_000, seed=3, near_dup_rate=0.02)
    assert plan[:5_000] == plan_scraped(5_000, seed=3, near_dup_rate=0.02)
    copies = [(i, j) for i, j in enumerate(plan) if j >= 0]
    assert 0.015 < len(copies) / len(plan) < 0.025
    originals = [j for _, j in copies]
    assert len(set(originals)) == len(originals)  # each original copied once
    assert all(j < i and plan[j] == -1 for i, j in copies)  # an earlier image, never a copy


def test_planted_near_duplicates_are_what_ingestion_finds(tmp_path):
    from PIL import Image

    from warehouse.sources.scraped import phash64

    root = tmp_path / "drop"
    meta = write_scraped_drop(root, 120, batch_size=50, seed=1, near_dup_rate=0.1)
    assert meta["images"] == 120 and meta["planted"] > 3
    assert write_scraped_drop(root, 120, batch_size=50, seed=1, near_dup_rate=0.1) == meta  # cached
    files = sorted(root.glob("batch-*/*/*.jpg"))
    assert len(files) == 120 and {f.parent.parent.name for f in files} == {
        "batch-0000",
        "batch-0001",
        "batch-0002",
    }
    hashes = np.array([phash64(Image.open(f)) for f in files], dtype=np.uint64)
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= 6, k=1))  # the ingest's threshold (near_duplicate_bits)
    ids = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    found = {frozenset((ids[a], ids[b])) for a, b in zip(i, j)}
    planted = {frozenset(p) for p in planted_pairs(root)}
    assert found == planted
    assert len(planted_pairs(root, upto=60)) < len(planted)


@pytest.mark.slow
def test_harness_at_a_tiny_size(tmp_path):
    from benchmarks.scale.run import STAGES, main

    out, work = tmp_path / "out", tmp_path / "work"
    stages = [s.name for s in STAGES if s.name != "autolabel_disfa_student"]
    # fmt: off
    rc = main([
        "--sizes", "tiny", "--fer2013", "20,40", "--scraped", "12,24", "--disfa", "6,12", "--batch", "12",
        "--disfa-res", "320x240", "--jobs", "1", "--device", "cpu",
        "--stages", ",".join(stages), "--out", str(out), "--work", str(work),
    ])
    # fmt: on
    assert rc == 0
    records = [json.loads(line) for line in (out / "scale.jsonl").read_text().splitlines()]
    rows = [r for r in records if r["kind"] == "stage"]
    for name in stages:
        mine = [r for r in rows if r["stage"] == name]
        assert [r["level"] for r in mine] == [0, 1], name
        expected = "skipped" if name == "review_queue" else "ok"  # no trained model on a fresh root
        assert all(r["status"] == expected for r in mine), (name, mine)
    by = {(r["stage"], r["level"]): r for r in rows}
    assert by["ingest_fer2013", 1]["size"] == 40 and by["ingest_fer2013", 1]["rows"]["images"] == 40
    assert by["ingest_scraped", 1]["batches"] == 2 and by["ingest_disfa", 1]["size"] == 12
    nd = by["near_duplicates", 1]
    assert nd["found_planted"] == nd["planted"] and nd["extra"] == 0
    assert by["autolabel_fer2013", 1]["added"] == 40  # one full-image face per FER row
    assert all(
        r["peak_mb"] > 50 and r["cpu_s"] > 0 and r["disk_mb"] > 0
        for r in rows
        if r["stage"] == "ingest_disfa"
    )
    text = (out / "scale.md").read_text()
    assert "## Growth per stage" in text and "## Goals" in text
    for name in stages:
        assert f"| {name} |" in text
    assert (out / "scale.png").stat().st_size > 10_000


def test_memory_projection_catches_superlinear_growth():
    sizes = [10_000, 30_000, 100_000]
    quadratic = [1e-7 * n**2 for n in sizes]
    assert project_memory(sizes, quadratic, 1_000_000) == pytest.approx(1e5, rel=0.01)
