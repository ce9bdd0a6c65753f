"""The storage contract: one explicit pyarrow schema per table, and the columns that make a
row's identity (re-appending a row with the same key adds nothing).

Tables
- images: one row per stored image or video frame. image_id is the sha256 of the file's bytes
  (scraped, FER-2013) or of the video's sha256 + frame index (DISFA). media_path is relative
  to the data root.
- emotion_labels: image_id, emotion (EMOTIONS), label_source (LABEL_SOURCES), confidence,
  annotator (who or what gave the label: "fer2013", "folder:happy", a model id, a user),
  recorded_at (when the store wrote it; null for rows written before labels were versioned).
- au_labels: image_id, au (FACS number), intensity 0..5 (null when unknown), present
  (intensity >= 2 for DISFA), label_source, probability (for model labels), annotator, recorded_at.
  Both label tables: crop_id names the face a label is about; null only for a label a source
  gives a whole single-face image (DISFA, FER-2013 gold, a scraped folder). Pseudo and human
  labels always name their face. threshold: the probability threshold a pseudo label passed;
  calibration: where that threshold's precision was measured (the model's held-out people, or
  the human labels of the face's own source); verified: whether that was the face's own source
  (an unverified pseudo label is shown to curators but stays out of dataset versions).
  Label tables are versioned: a label is identified by its key (image, crop, [au,] source, annotator);
  when a source corrects a label, the new value is a new row and supersedes the old one. The
  views `emotion_labels` / `au_labels` show the newest row per key; `<table>_history` shows all.
- rejects: bad input, with where it was (source_uri, line) and why (reason code + detail).
- near_duplicates: pairs of images whose perceptual hashes differ in few bits.
- detections: one row per box a detector found. image_id follows the images table (sha256 of
  an image file's bytes; stable_id(video sha256, frame) for a video frame), so detections join
  ingested images. detection_id hashes image, detector, weights and box: re-running the same
  detector on the same input yields the same ids. frame_index is 1-based, null for images.
  Boxes are in the image's pixels (x2, y2 exclusive); width/height are the image's size.
- crops: one row per face crop. crop_id hashes the detection and the crop parameters.
  media_path is the 224 px RGB crop, gray_media_path the 48 px gray one (data-root relative);
  face_px is the short side of the clipped box, blur the variance of the Laplacian of the
  224 px gray crop, brightness its mean gray level; angle the degrees it was turned to level
  the eyes.
- autolabel_done: one row per image an auto-labeling run has finished with one detector at one
  crop margin: its detections, face crops and rejects are stored. detector and weights_sha256 are
  the run's detector's (a merged one, the teachers, under its own name while its detections name
  each teacher); detections counts the boxes found, 0 when none (such an image has no detections
  row), so a repeated or resumed run skips it without decoding it. Written after the image's
  other rows: an image without one is redone, and those of its rows that had landed are skipped.
- dataset_versions: one row per dataset version (warehouse/versions.py). version is "v-" + the
  first 16 hex digits of the sha256 of the manifest's content (its sorted rows' values, not
  Parquet bytes), so the same crops + labels + splits always give the same id; parent the version
  it was derived from (null for none); n_crops / n_au_labeled / n_emotion_labeled count manifest
  rows (with any AU label / with an emotion); counts is JSON (sorted keys): crops, labeled rows
  per source and split, label sources, emotions per split, AUs present per split, groups.
  The manifest lives in `dataset_manifest`, so there is no manifest path. The row is written
  after its manifest rows: a version that is listed is complete.
- dataset_manifest: one row per (version, usable face crop). group is the unit that must not
  straddle splits or folds ("disfa:<subject>", "fer2013:<image_id>" since FER-2013 has no
  identities, "scraped:<batch>"); split train | val | test; media paths as in crops; emotion
  and emotion_source (the label_source that won) null when unlabeled; au1..au26 (DISFA_AUS)
  null when that AU is not labeled; au_source the weakest label_source among the row's AU
  labels (every AU in the row is at least that good), null when none is labeled.
- model_runs: one row per trained model. model_id is unique per run; config the model's
  configuration as JSON; weights_source says where the initial weights came from ("ImageNet
  (packaged)", "random init", a file); checkpoint, onnx and report are paths relative to the
  data root (null when not written); headline_metric/value the one number a list shows
  (e.g. "avg_f1" for AUs, "accuracy" for emotions).
- model_promotions: one row per promotion decision (models.registry): a newly evaluated model
  of `task` against the production model of the time, on the same held-out evaluation
  (`metric`, `value` vs `production_value`); `promoted` says whether it became production. The
  production model of a task is the newest promoted one.
- exclusions: a curator's verdict that a face must not be used (FiftyOne tag `reject`);
  versioned like the labels, so removing the tag (excluded false) lifts it.
- review_queue: faces for a curator, one row per (queue, face, reason): `queue` names the run
  that built it (e.g. the model id it was built for), `priority` orders it (higher first).
- label_studio_tasks: which face is which Label Studio task in which project (push adds none twice;
  a face pushed again after its task was deleted gets a new row that supersedes the old one).
- eval_metrics: every number of an evaluation. fold is null for the mean over folds; label is
  the AU ("AU12") or emotion the metric is about, "" for an overall figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LABEL_SOURCES: tuple[str, ...] = ("human", "gold", "pseudo", "weak")
SOURCES: tuple[str, ...] = ("disfa", "fer2013", "scraped")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
SEED_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)  # the 8 DISFA AUs of seed 000 (its Avg.F1)
# FACS names of the DISFA AUs (Ekman & Friesen's Facial Action Coding System), for people reading them
FACS_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    9: "nose wrinkler",
    12: "lip corner puller",
    15: "lip corner depressor",
    17: "chin raiser",
    20: "lip stretcher",
    25: "lips part",
    26: "jaw drop",
}
AU_PRESENT_THRESHOLD = 2  # seed 000 on DISFA: an AU is present when its intensity is >= 2

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("subject", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("frame_index", pa.int32()),
        pa.field("split", pa.string()),
        pa.field("batch", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("phash", pa.uint64()),
    ]
)

EMOTION_LABELS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("emotion", pa.string(), nullable=False),
        pa.field("label_source", pa.string(), nullable=False),
        pa.field("confidence", pa.float32()),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
        pa.field("crop_id", pa.string()),
        pa.field("threshold", pa.float32()),
        pa.field("calibration", pa.string()),
        pa.field("verified", pa.bool_()),
    ]
)

AU_LABELS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("au", pa.int16(), nullable=False),
        pa.field("intensity", pa.float32()),
        pa.field("present", pa.bool_(), nullable=False),
        pa.field("label_source", pa.string(), nullable=False),
        pa.field("probability", pa.float32()),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
        pa.field("crop_id", pa.string()),
        pa.field("threshold", pa.float32()),
        pa.field("calibration", pa.string()),
        pa.field("verified", pa.bool_()),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("reject_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

NEAR_DUPLICATES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string(), nullable=False),
        pa.field("distance", pa.int16(), nullable=False),
    ]
)


DETECTIONS = pa.schema(
    [
        pa.field("detection_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
    ]
)

CROPS = pa.schema(
    [
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("detection_id", pa.string(), nullable=False),
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("gray_media_path", pa.string(), nullable=False),
        pa.field("size", pa.int16(), nullable=False),
        pa.field("gray_size", pa.int16(), nullable=False),
        pa.field("margin", pa.float32(), nullable=False),
        pa.field("angle", pa.float32(), nullable=False),
        pa.field("face_px", pa.float32(), nullable=False),
        pa.field("blur", pa.float32(), nullable=False),
        pa.field("brightness", pa.float32(), nullable=False),
        pa.field("too_small", pa.bool_(), nullable=False),
        pa.field("too_blurry", pa.bool_(), nullable=False),
    ]
)


AUTOLABEL_DONE = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("margin", pa.float32(), nullable=False),
        pa.field("detections", pa.int32(), nullable=False),
    ]
)


DATASET_VERSIONS = pa.schema(
    [
        pa.field("version", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("parent", pa.string()),
        pa.field("n_crops", pa.int64(), nullable=False),
        pa.field("n_au_labeled", pa.int64(), nullable=False),
        pa.field("n_emotion_labeled", pa.int64(), nullable=False),
        pa.field("counts", pa.string(), nullable=False),
    ]
)

AU_COLUMNS: tuple[str, ...] = tuple(f"au{n}" for n in DISFA_AUS)  # dataset_manifest's AU columns

DATASET_MANIFEST = pa.schema(
    [
        pa.field("version", pa.string(), nullable=False),
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("gray_media_path", pa.string(), nullable=False),
        pa.field("emotion", pa.string()),
        pa.field("emotion_source", pa.string()),
        *(pa.field(name, pa.bool_()) for name in AU_COLUMNS),
        pa.field("au_source", pa.string()),
    ]
)

MODEL_RUNS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("architecture", pa.string(), nullable=False),
        pa.field("loss", pa.string()),
        pa.field("dataset_version", pa.string(), nullable=False),
        pa.field("config", pa.string(), nullable=False),
        pa.field("weights_source", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("checkpoint", pa.string()),
        pa.field("onnx", pa.string()),
        pa.field("report", pa.string()),
        pa.field("headline_metric", pa.string()),
        pa.field("headline_value", pa.float64()),
    ]
)

EVAL_METRICS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("dataset_version", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("fold", pa.int32()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

MODEL_PROMOTIONS = pa.schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("promoted", pa.bool_(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("production_model_id", pa.string()),
        pa.field("production_value", pa.float64()),
        pa.field("dataset_version", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

EXCLUSIONS = pa.schema(
    [
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("excluded", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("annotator", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)

REVIEW_QUEUE = pa.schema(
    [
        pa.field("queue", pa.string(), nullable=False),
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("priority", pa.float64(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("queued_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

LABEL_STUDIO_TASKS = pa.schema(
    [
        pa.field("project_id", pa.int64(), nullable=False),
        pa.field("crop_id", pa.string(), nullable=False),
        pa.field("task_id", pa.int64(), nullable=False),
        pa.field("pushed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """A table: its schema and the columns that identify a row.

    `values` is set for versioned tables (labels): a row whose key is stored with other values
    supersedes the stored row instead of being dropped; `stamp` names the column the store fills
    with the write time, which orders the versions of a key. `optional` columns were added after
    rows were written: a writer may leave them out, and parts without them read them as null."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    values: tuple[str, ...] = ()
    stamp: str | None = None
    optional: tuple[str, ...] = ()  # nullable columns a writer may leave out (they are null)

    @property
    def versioned(self) -> bool:
        return bool(self.values)

    @property
    def evolvable(self) -> tuple[str, ...]:
        """The columns a stored part may lack: those added to the contract after rows were
        written (the `optional` ones and the write stamp). The views read them as null in such a
        part, and the table's next write rewrites it with them (`Warehouse._migrate`)."""
        return (*self.optional, *((self.stamp,) if self.stamp else ()))


def part_differences(spec: TableSpec, schema: pa.Schema, nulls: Mapping[str, int] | None = None) -> list[str]:
    """How a stored part's schema differs from its table's contract, one phrase each; [] when
    the part is compatible. `nulls`: how many nulls each column holds (from the part's footer).

    The views read every part of a table by column name (DuckDB's union_by_name), so a part is
    compatible when that gives exactly the contract's columns and types:
    - it has every contract column, except the table's `evolvable` ones (a part written before
      they existed: they read as null, and the next write to the table adds them);
    - it has no other column (the view would grow it, null in every other part);
    - each column has the contract's type. Encodings of one type count as that type: string,
      large_string and string_view; binary likewise; a dictionary-encoded column as its values'
      type. A timestamp needs the contract's unit and a time zone where the contract has one (any
      zone's name: the stored instants are UTC). Nothing else is widened or narrowed: an int32
      column of an int64 contract, or a string of a float, changes the view's type;
    - a column the contract declares not nullable holds no null (its key would match nothing);
    - column order, the nullable flags and schema metadata do not matter.
    """
    counts: dict[str, int] = {}
    for field in schema:
        counts[field.name] = counts.get(field.name, 0) + 1
    have = {field.name: field.type for field in schema}
    missing = [f.name for f in spec.schema if f.name not in have and f.name not in spec.evolvable]
    out = []
    if missing:
        out.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    out += [f"column {name} appears {n} times" for name, n in counts.items() if n > 1]
    for field in spec.schema:
        if field.name in have and not _same_type(have[field.name], field.type):
            out.append(f"column {field.name} is {have[field.name]}, expected {field.type}")
    for field in spec.schema:
        n = (nulls or {}).get(field.name, 0)
        if n and not field.nullable:
            out.append(f"column {field.name} holds {n} null{'s' if n > 1 else ''}, expected none")
    extra = [name for name in counts if spec.schema.get_field_index(name) < 0]
    if extra:
        out.append(f"extra column{'s' if len(extra) > 1 else ''} {', '.join(extra)}")
    return out


_STRINGS = (pa.string(), pa.large_string(), pa.string_view())
_BINARIES = (pa.binary(), pa.large_binary(), pa.binary_view())


def _same_type(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a stored column of type `have` reads as the contract's `want` (part_differences)."""
    if pa.types.is_dictionary(have):
        have = have.value_type
    if have == want:
        return True
    for family in (_STRINGS, _BINARIES):
        if have in family and want in family:
            return True
    if pa.types.is_timestamp(have) and pa.types.is_timestamp(want):
        return have.unit == want.unit and (have.tz is None) == (want.tz is None)
    return False


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("images", IMAGES, ("image_id",)),
        TableSpec(
            "emotion_labels",
            EMOTION_LABELS,
            ("image_id", "crop_id", "label_source", "annotator"),
            values=("emotion", "confidence", "threshold", "calibration", "verified"),
            stamp="recorded_at",
            optional=("crop_id", "threshold", "calibration", "verified"),
        ),
        TableSpec(
            "au_labels",
            AU_LABELS,
            ("image_id", "crop_id", "au", "label_source", "annotator"),
            values=("intensity", "present", "probability", "threshold", "calibration", "verified"),
            stamp="recorded_at",
            optional=("crop_id", "threshold", "calibration", "verified"),
        ),
        TableSpec("rejects", REJECTS, ("reject_id",)),
        TableSpec("near_duplicates", NEAR_DUPLICATES, ("image_id", "duplicate_of")),
        TableSpec("detections", DETECTIONS, ("detection_id",)),
        TableSpec("crops", CROPS, ("crop_id",)),
        TableSpec("autolabel_done", AUTOLABEL_DONE, ("image_id", "detector", "weights_sha256", "margin")),
        TableSpec("dataset_versions", DATASET_VERSIONS, ("version",)),
        TableSpec("dataset_manifest", DATASET_MANIFEST, ("version", "crop_id")),
        TableSpec("model_runs", MODEL_RUNS, ("model_id",)),
        TableSpec("eval_metrics", EVAL_METRICS, ("model_id", "fold", "metric", "label")),
        TableSpec("model_promotions", MODEL_PROMOTIONS, ("task", "model_id")),
        TableSpec(
            "exclusions",
            EXCLUSIONS,
            ("crop_id", "annotator"),
            values=("excluded", "reason"),
            stamp="recorded_at",
        ),
        TableSpec("review_queue", REVIEW_QUEUE, ("queue", "crop_id", "reason")),
        # versioned: a face pushed again (its task deleted on the server) records its new task id
        TableSpec(
            "label_studio_tasks",
            LABEL_STUDIO_TASKS,
            ("project_id", "crop_id"),
            values=("task_id",),
            stamp="pushed_at",
        ),
    )
}
