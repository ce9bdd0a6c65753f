"""`ferlab analyze` on an ingested DISFA subject's video, scored frame by frame against its gold AU
labels: what the production models say about a whole recording, next to what the coders said.

    result = analyze_disfa_subject(wh, "SN001")          # AnalyzeSettings() unless given
    result.table                                         # one row per frame with a face
    result.f1                                            # {"au1": 0.71, ...}
    result.report["markdown"]                            # <home>/analysis/disfa/SN001/report/report.md

The video is the one ingestion read (its path is recorded in `images.source_uri`), the left camera
unless another is asked for. `labeling.analysis.analyze` runs on every frame of it; a frame where several
faces are found keeps the face of the highest detector score (the larger box on a tie): DISFA
films one person, so the others are false detections. The rows are joined by frame number to the
subject's gold labels (the `au_labels` view, so a corrected label file counts): the intensity and
the stored `present` flag, which is what the AU model learns from (`AUTask.true_labels` of the
manifest's present columns). Ingestion keeps every `stride`-th frame, so only those frames carry
gold; the others are in the table with empty gold columns and are not scored.

Outputs, under `<home>/analysis/disfa/<subject>/` (each replaced whole, atomically):
- `frames.parquet`: `frame`, `timestamp`, `track_id`, `score`, per AU the model measures `auN`
  (probability) and `auN_present`, then `auN_gold` (intensity 0..5) and `auN_gold_present` for
  those of them DISFA labels (null on frames without gold); the run's summary as JSON in the
  Parquet metadata under "ferlab.analysis_gold"
- `report/`: report.md, report.html and `probability_vs_gold.png`: per AU precision, recall and
  F1 of the predicted presence against gold on the frames that have both, the frame counts, and
  the frames with gold where no face was found (misses).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeling.analysis.analyze import AnalysisResult, analyze, au_thresholds
from labeling.analysis.settings import AnalyzeSettings
from labeling.detection.detectors import Detector
from models import render
from models.metrics import multilabel_scores
from models.pipeline import load_run
from warehouse.atomic import atomic_path
from warehouse.errors import InputError
from warehouse.store import Warehouse

log = logging.getLogger(__name__)
SOURCE = "disfa"
CAMERAS = ("left", "right")
FRAMES_FILE = "frames.parquet"
REPORT_DIR = "report"
PLOT = "probability_vs_gold.png"
_FRAME_SUFFIX = re.compile(r"#frame=\d+$")


def analysis_dir(wh: Warehouse, subject: str) -> Path:
    """Where a subject's analysis lives: `<home>/analysis/disfa/<subject>/`."""
    return wh.home / "analysis" / SOURCE / subject


# ---- inputs -------------------------------------------------------------------------------------
def subject_video(wh: Warehouse, subject: str, camera: str = "left") -> Path:
    """The video of `subject`'s `camera` that ingestion read (the path it recorded).

    Raises:
        InputError: the subject or camera was not ingested, or the recorded file is gone.
    """
    if camera not in CAMERAS:
        raise InputError(f"camera {camera!r}: give one of {', '.join(CAMERAS)}")
    rows = wh.sql(
        "SELECT DISTINCT source_uri FROM images WHERE source = ? AND subject = ? AND video_id = ? LIMIT 1",
        [SOURCE, subject, f"{subject}_{camera}"],
    )
    if not rows.num_rows:
        ingested = wh.sql(
            "SELECT DISTINCT video_id FROM images WHERE source = ? AND subject = ? ORDER BY 1",
            [SOURCE, subject],
        )
        cams = [v.rsplit("_", 1)[-1] for v in ingested.column("video_id").to_pylist()]
        raise InputError(
            f"DISFA subject {subject}: no {camera} camera frames in {wh.home}"
            + (f" (cameras ingested: {', '.join(cams)}): pass one of them" if cams else ": ingest it first")
        )
    video = Path(_FRAME_SUFFIX.sub("", rows.column("source_uri")[0].as_py()))
    if not video.is_file():
        raise InputError(
            f"{video}: the {subject} {camera} video ingestion read is gone; put the DISFA folder back there"
        )
    return video


def subject_group(subject: str) -> str:
    """The subject's group in a dataset version's manifest (warehouse.schemas: "disfa:<subject>")."""
    return f"{SOURCE}:{subject}"


def held_out_subjects(wh: Warehouse, model_id: str) -> list[str]:
    """The DISFA subjects the model never saw, in training or validation (none for a refit model)."""
    groups = load_run(wh, model_id).held_out_groups() or []
    return sorted(g.split(":", 1)[1] for g in groups if g.startswith(f"{SOURCE}:"))


def subject_in_model(wh: Warehouse, model_id: str, subject: str) -> str:
    """How the model relates to the subject: "held out" (its scores here are a test), "trained
    on" (seen in training or validation: the scores flatter it) or "not in its dataset version"."""
    run = load_run(wh, model_id)
    group = subject_group(subject)
    if group in (run.held_out_groups() or []):
        return "held out"
    return "trained on" if group in run.info.get("groups", []) else "not in its dataset version"


def gold_labels(wh: Warehouse, subject: str, camera: str = "left") -> pa.Table:
    """The subject's gold AU labels of that camera's frames: `frame`, `au`, `intensity`, `present`
    (the current label of each, corrections included)."""
    return wh.sql(
        "SELECT i.frame_index AS frame, a.au, a.intensity, a.present FROM au_labels a "
        "JOIN images i USING (image_id) WHERE i.source = ? AND i.subject = ? AND i.video_id = ? "
        "AND a.label_source = 'gold' AND a.crop_id IS NULL ORDER BY 1, 2",
        [SOURCE, subject, f"{subject}_{camera}"],
    )


# ---- the join -----------------------------------------------------------------------------------
def one_face_per_frame(table: pa.Table) -> pa.Table:
    """Per frame, the row of the highest detector score (the larger box on a tie), by frame."""
    if not table.num_rows:
        return table
    area = pc.multiply(pc.subtract(table["x2"], table["x1"]), pc.subtract(table["y2"], table["y1"]))
    order = np.lexsort(
        (-area.to_numpy(zero_copy_only=False), -table["score"].to_numpy(), table["frame"].to_numpy())
    )
    frames = table["frame"].to_numpy()[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = frames[1:] != frames[:-1]
    return table.take(pa.array(order[first]))


def _au_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if re.fullmatch(r"au\d+", c)]


def join_gold(rows: pa.Table, gold: pa.Table) -> pa.Table:
    """One face per frame (`one_face_per_frame`) with, per AU the rows measure and gold labels,
    `auN_gold` and `auN_gold_present` (null where the frame has no gold label of that AU)."""
    faces = one_face_per_frame(rows)
    aus = _au_columns(faces)
    cols: dict[str, pa.Array] = {
        name: faces[name] for name in ("frame", "timestamp", "track_id", "score", "x1", "y1", "x2", "y2")
    }
    for a in aus:
        cols[a] = faces[a]
    for a in aus:
        cols[f"{a}_present"] = faces[f"{a}_present"]
    frame = faces["frame"].to_numpy()
    labelled = set(gold["au"].to_pylist())
    for a in aus:
        n = int(a[2:])
        if n not in labelled:
            continue
        g = gold.filter(pc.equal(gold["au"], n))  # one row per frame, by frame; at least one
        gf = g["frame"].to_numpy()
        pos = np.minimum(np.searchsorted(gf, frame), len(gf) - 1)
        hit = gf[pos] == frame
        intensity = g["intensity"].to_numpy(zero_copy_only=False).astype(np.float32)
        present = g["present"].to_numpy(zero_copy_only=False).astype(bool)
        cols[f"{a}_gold"] = pa.array(intensity[pos], pa.float32(), mask=~hit)
        cols[f"{a}_gold_present"] = pa.array(present[pos], pa.bool_(), mask=~hit)
    return pa.table(cols)


# ---- scores -------------------------------------------------------------------------------------
@dataclass
class AUScore:
    au: str
    precision: float
    recall: float
    f1: float
    support: int  # frames where gold says present
    frames: int  # frames scored: a face and a gold label of this AU


def score_presence(table: pa.Table) -> list[AUScore]:
    """Per AU with gold, P / R / F1 of `auN_present` against `auN_gold_present` on the frames
    that have both (models.metrics.multilabel_scores)."""
    out = []
    for a in _au_columns(table):
        if f"{a}_gold_present" not in table.column_names:
            continue
        gold = table[f"{a}_gold_present"]
        known = gold.is_valid().to_numpy(zero_copy_only=False)
        y = gold.to_numpy(zero_copy_only=False)[known].astype(bool)[:, None]
        pred = table[f"{a}_present"].to_numpy(zero_copy_only=False)[known].astype(np.float64)[:, None]
        s = multilabel_scores(y, pred, np.array([0.5]))
        out.append(
            AUScore(
                a,
                float(s["precision"][0]),
                float(s["recall"][0]),
                float(s["f1"][0]),
                int(s["support"][0]),
                int(known.sum()),
            )
        )
    return out


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class DisfaAnalysis:
    subject: str
    camera: str
    video: Path
    table: pa.Table  # one row per frame with a face (see the module's docstring)
    scores: list[AUScore]
    frames: int  # frames analyzed
    frames_with_face: int
    gold_frames: int  # frames with a gold label
    missed_gold_frames: int  # analyzed frames with a gold label and no face found
    gold_not_analyzed: (
        int  # frames with a gold label the run did not analyze (stride, max_frames, undecodable)
    )
    multi_face_frames: int  # frames where more than one face was found
    subject_in_au_model: str  # subject_in_model: "held out", "trained on", ...
    analysis: AnalysisResult
    path: Path  # frames.parquet
    thresholds: dict[str, float] = field(default_factory=dict)  # per AU column, the model's
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def f1(self) -> dict[str, float]:
        return {s.au: round(s.f1, 4) for s in self.scores}

    @property
    def avg_f1(self) -> float:
        return float(np.mean([s.f1 for s in self.scores])) if self.scores else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "camera": self.camera,
            "video": str(self.video),
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "gold_frames": self.gold_frames,
            "missed_gold_frames": self.missed_gold_frames,
            "gold_not_analyzed": self.gold_not_analyzed,
            "multi_face_frames": self.multi_face_frames,
            "subject_in_au_model": self.subject_in_au_model,
            "f1": self.f1,
            "avg_f1": round(self.avg_f1, 4),
            "au_model": self.analysis.au_model,
            "emotion_model": self.analysis.emotion_model,
            "detector": self.analysis.detector,
        }

    def summary(self) -> str:
        return (
            f"DISFA {self.subject} ({self.camera}): {self.frames} frames, {self.frames_with_face} with a face; "
            f"{self.gold_frames} with gold, {self.missed_gold_frames} of them analyzed without a face, "
            f"{self.gold_not_analyzed} not analyzed; "
            f"Avg.F1 {render.fmt(self.avg_f1)} over {len(self.scores)} AUs (subject {self.subject_in_au_model} "
            f"by the AU model) -> {self.path.parent}"
        )


def analyzed_frames(result: AnalysisResult) -> set[int]:
    """The frame numbers a run on one video analyzed: every `stride`-th from 1, less the undecodable
    ones, up to the count it analyzed (`max_frames`)."""
    if not result.sources:
        return set()
    corrupt = set(result.corrupt)
    stride = result.settings.stride
    candidates = (f for f in range(1, result.sources[0].frames + 1, stride) if f not in corrupt)
    return {f for _, f in zip(range(result.frames), candidates)}


def analyze_disfa_subject(
    wh: Warehouse,
    subject: str,
    settings: AnalyzeSettings | None = None,
    camera: str = "left",
    detector: Detector | None = None,
) -> DisfaAnalysis:
    """Analyze `subject`'s `camera` video with `settings` (the production models unless given),
    join it to the gold labels, write `frames.parquet` and the report under `analysis_dir`.

    Raises:
        InputError: the subject or camera was not ingested, or its video is gone.
        LookupError: no production model of a task and none given in `settings`.
    """
    video = subject_video(wh, subject, camera)
    gold = gold_labels(wh, subject, camera)
    result = analyze(wh, video, settings, detector=detector)
    table = join_gold(result.table, gold)
    au_cols = _au_columns(result.table)
    cut = au_thresholds(wh, result.au_model, len(au_cols))
    scores = score_presence(table)
    gold_frames = set(gold["frame"].to_pylist())
    found = set(table["frame"].to_pylist())
    seen = analyzed_frames(result)
    counts = pc.value_counts(result.table["frame"]) if result.table.num_rows else None
    multi = int(pc.sum(pc.greater(counts.field("counts"), 1)).as_py() or 0) if counts is not None else 0
    out_dir = analysis_dir(wh, subject)
    r = DisfaAnalysis(
        subject=subject,
        camera=camera,
        video=video,
        table=table,
        scores=scores,
        frames=result.frames,
        frames_with_face=result.frames_with_faces,
        gold_frames=len(gold_frames),
        missed_gold_frames=len((gold_frames & seen) - found),
        gold_not_analyzed=len(gold_frames - seen),
        multi_face_frames=multi,
        subject_in_au_model=subject_in_model(wh, result.au_model, subject),
        analysis=result,
        path=out_dir / FRAMES_FILE,
        thresholds={a: float(t) for a, t in zip(au_cols, cut, strict=True)},
    )
    _write_table(r)
    r.report = write_report(r, out_dir / REPORT_DIR, gold)
    log.info(r.summary())
    return r


def _write_table(r: DisfaAnalysis) -> None:
    meta = {
        "ferlab.analysis_gold": json.dumps(r.as_dict()),
        "ferlab.analysis": json.dumps(r.analysis.as_dict()),
    }
    with atomic_path(r.path) as tmp:
        pq.write_table(r.table.replace_schema_metadata(meta), tmp, compression="zstd")


# ---- the report ---------------------------------------------------------------------------------
def _plot(path: Path, table: pa.Table, gold: pa.Table, aus: list[str], thresholds: dict[str, float]) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.9 * max(1, len(aus)) + 0.6))
    frame = table["frame"].to_numpy()
    for j, a in enumerate(aus):
        ax = fig.add_subplot(max(1, len(aus)), 1, j + 1)
        ax.plot(frame, table[a].to_numpy(zero_copy_only=False), lw=0.9, color="tab:blue", label="probability")
        if a in thresholds:
            ax.axhline(thresholds[a], color="grey", lw=0.8, ls="--", label="threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(a.upper(), fontsize=9)
        g = gold.filter(pc.equal(gold["au"], int(a[2:])))
        twin = ax.twinx()
        twin.step(
            g["frame"].to_numpy(),
            g["intensity"].to_numpy(zero_copy_only=False),
            where="post",
            lw=0.9,
            color="tab:orange",
            label="gold intensity",
        )
        twin.set_ylim(-0.1, 5.1)
        twin.set_ylabel("intensity", fontsize=8)
        if j == 0:
            ax.legend(loc="upper left", fontsize=8)
            twin.legend(loc="upper right", fontsize=8)
        if j == len(aus) - 1:
            ax.set_xlabel("frame")
    fig.tight_layout()
    return render.save_figure(fig, path)


def write_report(r: DisfaAnalysis, out_dir: Path, gold: pa.Table) -> dict[str, Any]:
    """report.md, report.html and the plot of `r` in `out_dir` (replaced whole)."""
    doc = render.Doc([])
    title = f"DISFA {r.subject}: analysis vs gold AU labels"
    doc.h(1, title)
    a = r.analysis
    doc.ul(
        [
            f"video: {r.video} ({r.camera} camera)",
            f"AU model {a.au_model}, emotion model {a.emotion_model}, detector {a.detector}",
            f"{r.subject} for the AU model: {r.subject_in_au_model}"
            + {
                "held out": " (never seen in its training or validation: these scores are a test)",
                "trained on": " (seen in its training or validation: these scores flatter it)",
            }.get(r.subject_in_au_model, ""),
            f"settings: average {a.settings.average}, stride {a.settings.stride}, "
            f"model variant {a.settings.model_variant}",
            f"frames analyzed: {r.frames} ({a.corrupt_frames} undecodable skipped)",
            f"frames with a face: {r.frames_with_face}",
            f"frames with gold labels: {r.gold_frames}",
            f"frames with gold labels but no face found (misses, not scored): {r.missed_gold_frames}",
            f"frames with gold labels not analyzed (stride, max_frames, undecodable; not scored): "
            f"{r.gold_not_analyzed}",
            f"frames with more than one face: {r.multi_face_frames}; each keeps the face of the highest "
            "detector score (the larger box on a tie): DISFA films one person",
        ]
    )
    doc.h(2, "Presence per AU, frame by frame")
    doc.p(
        "Predicted presence (the probability at the model's threshold) against gold presence (the "
        "stored DISFA label, what the AU model learns from), on the frames with a face and a gold "
        "label of the AU; a ratio with nothing to divide by is 0 (an AU neither gold nor the model "
        f"calls present scores F1 0). Avg.F1 {render.fmt(r.avg_f1)}."
    )
    doc.table(
        ["AU", "precision", "recall", "F1", "gold present", "frames scored", "threshold"],
        [
            [
                s.au.upper(),
                render.fmt(s.precision),
                render.fmt(s.recall),
                render.fmt(s.f1),
                s.support,
                s.frames,
                render.fmt(r.thresholds.get(s.au, float("nan"))),
            ]
            for s in r.scores
        ],
    )
    aus = [s.au for s in r.scores]
    plots: render.Plots = {}
    if aus and r.table.num_rows:
        doc.h(2, "Probability vs gold intensity over the frames")
        doc.img(PLOT, "predicted probability and gold intensity per AU over the frames")
        plots[PLOT] = lambda path: _plot(path, r.table, gold, aus, r.thresholds)
    return render.write_folder(out_dir, doc, title, plots)
