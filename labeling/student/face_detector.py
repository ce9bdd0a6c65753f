"""The platform's own face detector, trained from the warehouse: the logic of the
`face_detector` asset (assets/face_detector.py), without Dagster.

    trained = train_face_detector(wh, load_detector("teachers"), StudentDetectorSettings(epochs=30))
    trained.weights      # <home>/models/face_detector/student.pt (+ student.onnx beside it)

The ingested DISFA frames (every `disfa_stride`-th of each video) and scraped images are
labeled by the teachers and a YOLO student is trained on them (labeling.student.yolo), in a work
folder beside the target; the finished files then replace the installed ones atomically, so a
detection run never sees half a file and DetectorResource(spec="auto") picks the student up.
FER-2013 images are face crops already: nothing to localize, so they are left out.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeling.detection.detectors import Detector
from labeling.detection.geometry import Box
from labeling.student.settings import StudentDetectorSettings
from labeling.student.truth import read_face_boxes, truth_root
from labeling.student.yolo import ImageInput, StudentReport, init_weights, teach_student
from warehouse.atomic import atomic_path
from warehouse.hashing import sha256_file
from warehouse.store import Warehouse

STUDENT_DIR = Path("models") / "face_detector"
STUDENT_PT = "student.pt"
STUDENT_ONNX = "student.onnx"
TRAIN_SOURCES = ("disfa", "scraped")


def student_dir(home: str | Path) -> Path:
    """Where the trained student is installed under the data root `home`."""
    return Path(home) / STUDENT_DIR


def resolve_detector(home: str | Path, spec: str, fallback: str) -> str:
    """A detector spec for load_detector: "auto" is this data root's trained student
    (<home>/models/face_detector/student.pt) when there is one, else `fallback` (the video analysis
    falls back on "yunet", the face teacher; auto-labeling on "teachers", which add the persons);
    any other spec as it is."""
    if spec != "auto":
        return spec
    student = student_dir(home) / STUDENT_PT
    return str(student) if student.is_file() else fallback


# ---- what to train on -------------------------------------------------------------------------
def _group(row: Mapping[str, Any]) -> str:
    """What must not straddle the train/val split. A DISFA subject. A scraped image: its batch
    and sub-folder, since the images of one folder of one drop tend to come from one crawl query
    (similar scenes); by batch alone, a data root with one batch (the demo's, or any first drop)
    would put every scene on the same side of the split."""
    if row["source"] == "disfa":
        return str(row["subject"] or row["video_id"] or row["source_uri"].partition("#")[0])
    batch = str(row["batch"] or "")
    folder = Path(row["source_uri"]).parent.name
    return batch if folder in ("", batch) else f"{batch}/{folder}"


def select_training_images(wh: Warehouse, disfa_stride: int = 8, max_images: int = 1000) -> list[dict]:
    """The images rows to train on, each with its `group`: every `disfa_stride`-th stored frame
    of each DISFA video and every scraped image; when that is more than `max_images`, an evenly
    spaced subset of them (so every group keeps its share). Deterministic."""
    if disfa_stride < 1 or max_images < 1:
        raise ValueError(f"disfa_stride and max_images must be >= 1, not {disfa_stride}, {max_images}")
    sources = ", ".join(f"'{s}'" for s in TRAIN_SOURCES)
    rows = wh.sql(
        "SELECT image_id, source, source_uri, frame_index, media_path, subject, video_id, batch, "
        "row_number() OVER (PARTITION BY source, video_id ORDER BY frame_index) - 1 AS k "
        f"FROM images WHERE source IN ({sources})"
    ).to_pylist()
    kept = [r for r in rows if r["source"] != "disfa" or r["k"] % disfa_stride == 0]
    for r in kept:
        r["group"] = _group(r)
    kept.sort(key=lambda r: (r["source"], r["group"], r["frame_index"] or 0, r["source_uri"]))
    if len(kept) > max_images:
        kept = [kept[i] for i in np.unique(np.linspace(0, len(kept) - 1, max_images).round().astype(int))]
    return kept


def training_inputs(wh: Warehouse, rows: Sequence[Mapping[str, Any]]) -> list[ImageInput]:
    """(image_id, media file, group) triples for labeling.student.yolo."""
    return [(r["image_id"], wh.path(r["media_path"]), r["group"]) for r in rows]


def truth_for(rows: Sequence[Mapping[str, Any]], truth_csv: str | Path) -> dict[str, list[Box]]:
    """image_id -> its true face boxes (labeling.student.truth's CSV at `truth_csv`), for the rows
    whose source file lies under the folder that CSV describes; such an image without a truth
    row holds no face. Empty when no row comes from there. OSError when the CSV cannot be read."""
    root = truth_root(truth_csv)
    boxes = read_face_boxes(truth_csv)
    truth: dict[str, list[Box]] = {}
    for r in rows:
        path = Path(r["source_uri"].partition("#frame=")[0]).resolve()
        if not path.is_relative_to(root):
            continue
        key = (path.relative_to(root).as_posix(), r["frame_index"] if r["source"] == "disfa" else None)
        truth[r["image_id"]] = [("face", *box) for box in boxes.get(key, [])]
    return truth


# ---- training and installing ------------------------------------------------------------------
@dataclass
class TrainedDetector:
    weights: Path  # the installed student.pt
    onnx: Path  # the installed student.onnx
    weights_sha256: str
    report: StudentReport  # its paths point into the work folder, gone by now
    images_by_source: dict[str, int] = field(default_factory=dict)
    val_groups: list[str] = field(default_factory=list)


def install_student(
    report: StudentReport, target: Path, settings: StudentDetectorSettings
) -> tuple[Path, Path]:
    """Copy the trained files to target/student.{onnx,pt}, each through a temp file + rename
    (whole or not at all), with the `settings` that made them (settings.json); the ONNX file
    and the settings first, since student.pt appearing is what switches the `auto` detector over."""
    target.mkdir(parents=True, exist_ok=True)
    settings.save(target)
    pt, onnx = target / STUDENT_PT, target / STUDENT_ONNX
    for source, dest in ((report.onnx, onnx), (report.weights, pt)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(Path(source).read_bytes())
    return pt, onnx


def train_face_detector(
    wh: Warehouse,
    teacher: Detector,
    settings: StudentDetectorSettings | None = None,
    target: Path | None = None,
    truth_csv: str | Path | None = None,
    **train_args: Any,
) -> TrainedDetector:
    """Label the warehouse's DISFA frames and scraped images (`settings.disfa_stride`,
    `settings.max_images`) with `teacher`, train the student on them as `settings` say
    (labeling.student.yolo), split by group, score it on the held-out groups (against the teacher,
    and against the ground truth in `truth_csv`, a labeling.student.truth CSV, when the caller gives
    one) and install it in `target` (default <home>/models/face_detector) with its
    settings.json. ValueError when there is nothing to train on; ConfigError, InputError or
    UnsafeFileError for a start file or device that cannot be used, before anything is labeled."""
    settings = settings or StudentDetectorSettings()
    init_weights(settings.init)
    rows = select_training_images(wh, settings.disfa_stride, settings.max_images)
    if not rows:
        raise ValueError(
            f"no DISFA frames or scraped images in the warehouse at {wh.home} to train the face "
            "detector on: ingest some first (disfa_ingest_job, scraped_ingest_job)"
        )
    truth = truth_for(rows, truth_csv) if truth_csv else {}
    target = Path(target) if target else student_dir(wh.home)
    target.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, int] = {}
    for r in rows:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    # The work folder sits beside the target: same file system, removed whatever happens.
    with tempfile.TemporaryDirectory(prefix=".train-", dir=target) as work:
        report = teach_student(
            training_inputs(wh, rows),
            teacher,
            Path(work),
            truth=truth or None,
            settings=settings,
            **train_args,
        )
        with open(Path(work) / "dataset" / "manifest.csv") as f:
            val_groups = sorted({r["group"] for r in csv.DictReader(f) if r["split"] == "val"})
        pt, onnx = install_student(report, target, settings)
    return TrainedDetector(
        weights=pt,
        onnx=onnx,
        weights_sha256=sha256_file(pt),
        report=report,
        images_by_source=by_source,
        val_groups=val_groups,
    )
