"""A DISFA subject's video analyzed against its gold AU labels (labeling.analysis.gold) and the
`disfa_analysis` asset over it, on the session's analysis data root (conftest.analysis_home: three demo people ingested at
stride 2, tiny production models): the join, the counts and the report, not the models' quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.schemas import AU_PRESENT_THRESHOLD, DISFA_AUS, SEED_AUS

SUBJECT = "SN001"
GOLD_AUS = [n for n in SEED_AUS if n in DISFA_AUS]  # the model's AUs DISFA labels


def _faces(rows: list[tuple[int, float, float]]) -> pa.Table:
    """Rows (frame, score, box side) as analyze writes them, one AU."""
    return pa.table(
        {
            "frame": pa.array([r[0] for r in rows], pa.int64()),
            "timestamp": pa.array([0.0] * len(rows)),
            "x1": pa.array([0.0] * len(rows), pa.float32()),
            "y1": pa.array([0.0] * len(rows), pa.float32()),
            "x2": pa.array([r[2] for r in rows], pa.float32()),
            "y2": pa.array([r[2] for r in rows], pa.float32()),
            "score": pa.array([r[1] for r in rows], pa.float32()),
            "track_id": pa.array(list(range(len(rows))), pa.int64()),
            "au12": pa.array([r[1] for r in rows], pa.float32()),
            "au12_present": pa.array([r[1] >= 0.5 for r in rows]),
        }
    )


# ---- the join, no data root --------------------------------------------------------------------
def test_one_face_per_frame_keeps_the_highest_score_then_the_larger_box():
    from labeling.analysis.gold import one_face_per_frame

    rows = _faces([(3, 0.4, 50), (1, 0.6, 10), (1, 0.9, 20), (3, 0.4, 80), (2, 0.7, 30)])
    kept = one_face_per_frame(rows)
    assert kept["frame"].to_pylist() == [1, 2, 3]
    assert kept["track_id"].to_pylist() == [2, 4, 3]


def test_join_gold_matches_frames_and_leaves_frames_without_gold_empty():
    from labeling.analysis.gold import join_gold, score_presence

    rows = _faces([(1, 0.9, 20), (2, 0.2, 20), (3, 0.8, 20), (5, 0.3, 20)])
    gold = pa.table(
        {
            "frame": pa.array([1, 3, 4, 5], pa.int32()),
            "au": pa.array([12, 12, 12, 12], pa.int16()),
            "intensity": pa.array([3.0, 0.0, 4.0, 2.0], pa.float32()),
            "present": [True, False, True, True],
        }
    )
    t = join_gold(rows, gold)
    assert t["au12_gold"].to_pylist() == [3.0, None, 0.0, 2.0]
    assert t["au12_gold_present"].to_pylist() == [True, None, False, True]
    (s,) = score_presence(t)
    # frames 1, 3, 5 scored: predicted present 1, 3; gold present 1, 5 -> tp 1, fp 1, fn 1
    assert (s.frames, s.support) == (3, 2)
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(0.5) and s.f1 == pytest.approx(0.5)


# ---- a demo subject ----------------------------------------------------------------------------
def _label_file(data_root: Path, au: int) -> dict[int, float]:
    """The subject's label file as ingestion read it: frame -> intensity."""
    from warehouse import Warehouse

    query = "SELECT any_value(source_uri) AS u FROM images WHERE subject = ?"
    video = Warehouse(data_root).sql(query, [SUBJECT])["u"][0].as_py()
    disfa = Path(video.split("#")[0]).parents[1]
    lines = (disfa / "ActionUnit_Labels" / SUBJECT / f"{SUBJECT}_au{au}.txt").read_text().split()
    return {int(f): float(v) for f, v in (line.split(",") for line in lines)}


@pytest.fixture(scope="module")
def home(analysis_home) -> Path:
    return analysis_home


@pytest.fixture(scope="module")
def analysis(home):
    from labeling.analysis.gold import analyze_disfa_subject
    from warehouse import Warehouse

    return analyze_disfa_subject(Warehouse(home), SUBJECT)


@pytest.mark.slow
def test_one_row_per_frame_with_a_face_and_the_gold_of_the_label_files(home, analysis):
    r = analysis
    raw = r.analysis.table["frame"].to_pylist()
    frames = r.table["frame"].to_pylist()
    assert (
        frames == sorted(set(raw)) and len(frames) == r.frames_with_face > 0
    )  # one row per frame with a face
    assert r.frames == 64 and r.gold_frames == 32  # ingested at stride 2: odd frames carry gold
    assert r.missed_gold_frames == len(set(range(1, 65, 2)) - set(frames)) and r.gold_not_analyzed == 0
    for au in GOLD_AUS:
        labels = _label_file(home, au)
        gold = r.table[f"au{au}_gold"].to_pylist()
        present = r.table[f"au{au}_gold_present"].to_pylist()
        for f, g, p in zip(frames, gold, present, strict=True):
            if f % 2 == 1:
                assert g == labels[f] and p == (labels[f] >= AU_PRESENT_THRESHOLD), (au, f)
            else:
                assert g is None and p is None, (au, f)
    stored = pq.read_table(r.path)
    assert stored.num_rows == r.table.num_rows and b"ferlab.analysis_gold" in stored.schema.metadata


@pytest.mark.slow
def test_the_report_has_the_f1_table_the_counts_and_the_plot(analysis):
    r = analysis
    md = Path(r.report["markdown"]).read_text()
    assert "| AU | precision | recall | F1 | gold present | frames scored | threshold |" in md
    assert [s.au for s in r.scores] == [f"au{n}" for n in GOLD_AUS]
    t = r.table
    gold = t["au12_gold_present"].to_numpy(zero_copy_only=False)
    known = ~t["au12_gold_present"].is_null().to_numpy(zero_copy_only=False)
    y, p = gold[known].astype(bool), t["au12_present"].to_numpy(zero_copy_only=False)[known]
    tp, fp, fn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    assert r.f1["au12"] == pytest.approx(f1, abs=1e-4)
    assert (
        "| AU12 | " in md
        and f"frames with gold labels but no face found (misses, not scored): {r.missed_gold_frames}" in md
    )
    assert "highest detector score" in md
    # whether the AU model saw the subject, from its own run: a score on training faces is said to be one
    from labeling.analysis.gold import held_out_subjects
    from warehouse import Warehouse

    held = held_out_subjects(Warehouse(Path(r.path).parents[3]), r.analysis.au_model)
    assert r.subject_in_au_model == ("held out" if SUBJECT in held else "trained on")
    assert f"{SUBJECT} for the AU model: {r.subject_in_au_model}" in md
    assert all(Path(x).stat().st_size > 0 for x in r.report["plots"]) and "probability_vs_gold.png" in md
    assert np.isfinite(r.avg_f1)


@pytest.mark.slow
def test_the_asset_through_its_job(home):
    """`disfa_analysis_job` on the subject's partition, the first 20 frames: metadata and files."""
    from dagster import DagsterInstance

    from dagster_project.definitions import defs

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("disfa_subjects", [SUBJECT])
    run = defs.resolve_job_def("disfa_analysis_job").execute_in_process(
        instance=instance,
        partition_key=SUBJECT,
        run_config={
            "resources": {"warehouse": {"config": {"home": str(home)}}},
            "ops": {"disfa_analysis": {"config": {"max_frames": 20, "device": "cpu"}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
    )
    assert run.success
    meta = run.asset_materializations_for_node("disfa_analysis")[0].metadata
    rows = meta["dagster/row_count"].value
    assert 0 < rows <= 20 and meta["frames"].value == 20
    assert meta["gold_not_analyzed"].value == 32 - 10  # odd frames past 20
    assert sorted(meta["f1"].value) == sorted(f"au{n}" for n in GOLD_AUS)
    assert (home / meta["report"].value).is_file() and "| AU |" in meta["summary"].value  # under the root
    table = pq.read_table(meta["table"].value)
    assert table.num_rows == rows and max(table["frame"].to_pylist()) <= 20
    assert Path(meta["table"].value) == home / "analysis" / "disfa" / SUBJECT / "frames.parquet"


@pytest.mark.slow
def test_the_command_and_its_errors(home, capsys):
    from ferlab.cli import main

    base = ["--home", str(home), "analyze-disfa"]
    assert main([*base, SUBJECT, "--max-frames", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"report: {home / 'analysis' / 'disfa' / SUBJECT / 'report' / 'report.md'}" in out
    assert main([*base, "SN999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: DISFA subject SN999: no left camera frames") and "\n" not in err
