"""What the warehouse says about each image, read in one pass (SQL over images, labels,
detections and crops) and written as the stored form of FiftyOne's labels. No FiftyOne import
here: labeling.fiftyone.sync writes these documents into a dataset.

Label precedence (which emotion / AU label an image shows) is warehouse.precedence's, the
same the dataset versions use. Label ids are derived from the warehouse keys (detection_id,
crop_id, image and AU), so a re-sync gives a label the same id.

Per face (one `face_emotions` detection per crop): the face's emotion label by the same
precedence, over the labels that name the face (crop_id) and, when the face takes its image's
labels (the only face of its crop set, or the largest face of a one-face source, as in the
dataset versions), the image's labels; whether a curator excluded it (`exclusions`, tags `reject` /
`relabel` from the exclusion's reason); its pending place in `review_queue` (the highest
priority among queue rows not yet answered by a human label of the face written after the
row was queued), with every reason it waits for and their details; and the production models'
view of the face (labeling.curation.model_view: every emotion's and AU's probability and the
model's call, read from the models' prediction caches, so no model runs here). `ferlab_label` /
`ferlab_tags` repeat what was synced, so that labeling.fiftyone.corrections can tell a curator's
edit from the synced value.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np

from labeling.curation.model_view import CALL_RULES, named, production_views
from labeling.detection.geometry import crop_squares
from warehouse.precedence import au_order_sql, counts_sql, emotion_order_sql
from warehouse.store import Warehouse, quote_literal
from warehouse.versions import ONE_FACE_SOURCES

# Bump when the conversion below changes: every sample's digest changes and it is rewritten.
FORMAT = 3
SCALARS = ("image_id", "source", "subject", "video_id", "split", "batch", "frame_index")
DOCS = ("metadata", "ground_truth", "aus", "detections", "face_crops", "face_emotions", "predictions")
# The curator's tags ferlab reads back (labeling.fiftyone.corrections) and shows for exclusions.
CURATOR_TAGS = ("reject", "relabel")


def _rows(con, query: str) -> list[dict[str, Any]]:
    return con.sql(query).to_arrow_table().to_pylist()


T = TypeVar("T")


# The rows read per image, their fields named as the queries' columns and in their order.
class GroundTruth(NamedTuple):
    """The image's emotion label by the precedence, and how many labels it has."""

    emotion: str
    label_source: str
    confidence: float | None
    annotator: str | None
    n_labels: int


class AULabel(NamedTuple):
    """A present AU by the precedence."""

    au: int
    intensity: float | None
    label_source: str
    probability: float | None
    annotator: str | None


class DetectionRow(NamedTuple):
    detection_id: str
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    width: int
    height: int
    score: float
    detector: str
    weights_sha256: str | None


class CropRow(NamedTuple):
    """A face crop with its detection's box."""

    crop_id: str
    detection_id: str
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    width: int
    height: int
    score: float
    margin: float
    media_path: str
    gray_media_path: str
    size: int
    gray_size: int
    angle: float
    face_px: float
    blur: float
    brightness: float
    too_small: bool
    too_blurry: bool


class FaceRow(NamedTuple):
    """A crop's emotion label, exclusion and pending review (_faces_sql)."""

    crop_id: str
    x1: float
    y1: float
    x2: float
    y2: float
    width: int
    height: int
    emotion: str | None
    label_source: str | None
    confidence: float | None
    threshold: float | None
    annotator: str | None
    excluded: bool
    tags: list[str]
    priority: float | None
    reasons: list[str] | None
    detail: str | None


class ViewRow(NamedTuple):
    """A production model's view of a crop (labeling.curation.model_view.ModelView), as plain values."""

    crop_id: str
    task: str
    model_id: str
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    states: tuple[str, ...]


class PredictionRow(NamedTuple):
    """A production model's pseudo label of a crop (_predictions_sql); `annotator` is the model.
    AUs: only those labelled present (the absent ones are in the faces' model views)."""

    crop_id: str
    kind: str
    label: str
    probability: float | None
    threshold: float | None
    present: bool
    annotator: str | None


def _named(row_type: type[T], row: dict[str, Any]) -> T:
    return row_type(**{k: row[k] for k in row_type._fields})


def _plain(rows: list | None) -> list[tuple] | None:
    """The rows as plain tuples: the digest stays what it was when they were tuples."""
    return None if rows is None else [tuple(r) for r in rows]


@dataclass(slots=True)
class WarehouseImage:
    """What the warehouse says about one image, as plain values (hashable by repr)."""

    filepath: str
    scalars: tuple
    size: tuple[int, int]
    ground_truth: GroundTruth | None = None
    aus: list[AULabel] | None = None
    detections: list[DetectionRow] | None = None
    crops: list[CropRow] | None = None
    faces: list[FaceRow] | None = None  # per crop: its emotion label, exclusion and review state
    predictions: list[PredictionRow] | None = None  # the production models' pseudo labels, per crop
    views: list[ViewRow] | None = None  # the production models' view of each crop
    digest: str = ""

    def seal(self) -> None:
        gt = None if self.ground_truth is None else tuple(self.ground_truth)
        parts = (FORMAT, self.filepath, self.scalars, self.size, gt, _plain(self.aus))
        more = map(_plain, (self.detections, self.crops, self.faces, self.predictions, self.views))
        self.digest = hashlib.sha1(repr((parts, *more)).encode()).hexdigest()


def read_warehouse(wh: Warehouse, sources: Sequence[str] | None = None) -> dict[str, WarehouseImage]:
    """image_id -> what the warehouse says about it (all images, or those of `sources`), each
    sealed with its digest."""
    where = "" if sources is None else "WHERE source IN (" + ", ".join(map(quote_literal, sources)) + ")"
    home = str(wh.home)
    with wh.connect() as con:
        con.execute(
            "CREATE TEMP TABLE scope AS SELECT image_id, source, subject, video_id, frame_index, "
            f"split, batch, width, height, media_path FROM images {where}"
        )
        images = {
            r["image_id"]: WarehouseImage(
                f"{home}/{r['media_path']}", tuple(r[k] for k in SCALARS), (r["width"], r["height"])
            )
            for r in _rows(
                con, "SELECT * FROM scope ORDER BY source, subject, video_id, frame_index, media_path"
            )
        }
        in_scope = "image_id IN (SELECT image_id FROM scope)"
        for r in _rows(
            con,
            f"""SELECT image_id, emotion, label_source, confidence, annotator, n_labels FROM (
                  SELECT *, count(*) OVER (PARTITION BY image_id) AS n_labels,
                    row_number() OVER (PARTITION BY image_id ORDER BY {emotion_order_sql()}) AS rank
                  FROM emotion_labels WHERE {in_scope} AND {counts_sql("emotion")}) WHERE rank = 1""",
        ):
            images[r["image_id"]].ground_truth = _named(GroundTruth, r)
        aus = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT image_id, au, intensity, label_source, probability, annotator FROM (
                  SELECT *, row_number() OVER (PARTITION BY image_id, au ORDER BY {au_order_sql()}) AS rank
                  FROM au_labels WHERE {in_scope} AND {counts_sql("au")}) WHERE rank = 1 AND present
                ORDER BY image_id, au""",
        ):
            aus[r["image_id"]].append(_named(AULabel, r))
        dets = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT image_id, detection_id, label, x1, y1, x2, y2, width, height, score, detector,
                  weights_sha256 FROM detections WHERE {in_scope}
                ORDER BY image_id, detector, score DESC, detection_id""",
        ):
            dets[r["image_id"]].append(_named(DetectionRow, r))
        crops = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT c.image_id, c.crop_id, c.detection_id, d.label, d.x1, d.y1, d.x2, d.y2, d.width,
                  d.height, d.score, c.margin, c.media_path, c.gray_media_path, c.size, c.gray_size,
                  c.angle, c.face_px, c.blur, c.brightness, c.too_small, c.too_blurry
                FROM crops c JOIN detections d USING (detection_id)
                WHERE c.{in_scope} ORDER BY c.image_id, c.crop_id""",
        ):
            crops[r["image_id"]].append(_named(CropRow, r))
        faces = defaultdict(list)
        for r in _rows(con, _faces_sql(in_scope)):
            faces[r["image_id"]].append(_named(FaceRow, r))
        predictions = defaultdict(list)
        for r in _rows(con, _predictions_sql(in_scope)):
            predictions[r["image_id"]].append(_named(PredictionRow, r))
    for image_id, found in faces.items():
        images[image_id].faces = found
    for image_id, found in _view_rows(wh, faces).items():
        images[image_id].views = found
    for image_id, found in predictions.items():
        images[image_id].predictions = found
    for image_id, found in aus.items():
        images[image_id].aus = found
    for image_id, found in dets.items():
        images[image_id].detections = found
    for image_id, found in crops.items():
        images[image_id].crops = found
    for im in images.values():
        im.seal()
    return images


def _view_rows(wh: Warehouse, faces: dict[str, list[FaceRow]]) -> dict[str, list[ViewRow]]:
    """image_id -> the production models' views of its faces (those the models predicted)."""
    image_of = {f.crop_id: image_id for image_id, found in faces.items() for f in found}
    out: dict[str, list[ViewRow]] = defaultdict(list)
    for crop_id, by_task in sorted(production_views(wh, image_of).items()):
        for task, v in sorted(by_task.items()):
            out[image_of[crop_id]].append(
                ViewRow(
                    crop_id,
                    task,
                    v.model_id,
                    tuple(c.label for c in v.calls),
                    tuple(c.probability for c in v.calls),
                    tuple(c.state for c in v.calls),
                )
            )
    return out


def _faces_sql(in_scope: str) -> str:
    """One row per crop of the images in scope: its box, its best emotion label, its exclusion
    (tags from the current exclusions' reasons) and its pending review (module docstring)."""
    one_face = ", ".join(map(quote_literal, ONE_FACE_SOURCES))
    tags = ", ".join(map(quote_literal, CURATOR_TAGS))
    return f"""
    WITH f AS (
        SELECT c.image_id, c.crop_id, d.x1, d.y1, d.x2, d.y2, d.width, d.height, i.source,
            -- faces are counted per crop set (detector, weights, crop parameters), as the versions do
            count(*) OVER (PARTITION BY c.image_id, d.detector, d.weights_sha256, c.margin, c.size, c.gray_size)
                AS n_faces,
            row_number() OVER (PARTITION BY c.image_id ORDER BY c.face_px DESC, c.crop_id) AS face_rank
        FROM crops c JOIN detections d USING (detection_id) JOIN scope i ON i.image_id = c.image_id
        WHERE c.{in_scope}
    ),
    emo AS (
        SELECT * FROM (
            SELECT f.crop_id, e.emotion, e.label_source, e.confidence, e.threshold, e.annotator,
                row_number() OVER (PARTITION BY f.crop_id ORDER BY {emotion_order_sql("e.")}) AS pick
            FROM f JOIN emotion_labels e ON e.image_id = f.image_id AND (e.crop_id = f.crop_id OR (
                e.crop_id IS NULL AND (f.n_faces = 1 OR (f.source IN ({one_face}) AND f.face_rank = 1))))
            WHERE {counts_sql("emotion", "e.")}
        ) WHERE pick = 1
    ),
    excl AS (
        SELECT crop_id, list_sort(list_distinct(list(reason) FILTER (WHERE reason IN ({tags})))) AS tags
        FROM exclusions WHERE excluded GROUP BY crop_id
    ),
    answered AS (
        SELECT crop_id, recorded_at FROM emotion_labels WHERE label_source = 'human' AND crop_id IS NOT NULL
        UNION ALL
        SELECT crop_id, recorded_at FROM au_labels WHERE label_source = 'human' AND crop_id IS NOT NULL
    ),
    queued AS (
        SELECT q.crop_id, max(q.priority) AS priority, list_sort(list_distinct(list(q.reason))) AS reasons,
            -- each reason's detail, naming its queue's task ("au:<model>" -> au): both queues may
            -- queue a face for one reason
            string_agg(q.reason || ' (' || split_part(q.queue, ':', 1) || ')' || coalesce(': ' || q.detail, ''),
                '; ' ORDER BY q.priority DESC, q.reason) AS detail
        FROM review_queue q
        WHERE NOT EXISTS (SELECT 1 FROM answered a WHERE a.crop_id = q.crop_id AND a.recorded_at >= q.queued_at)
        GROUP BY q.crop_id
    )
    SELECT f.image_id, f.crop_id, f.x1, f.y1, f.x2, f.y2, f.width, f.height, e.emotion, e.label_source,
        e.confidence, e.threshold, e.annotator, x.crop_id IS NOT NULL AS excluded,
        coalesce(x.tags, []) AS tags, q.priority, q.reasons, q.detail
    FROM f LEFT JOIN emo e USING (crop_id) LEFT JOIN excl x USING (crop_id) LEFT JOIN queued q USING (crop_id)
    ORDER BY f.image_id, f.crop_id"""


def _predictions_sql(in_scope: str) -> str:
    """The pseudo labels of the production models that name a face of an image in scope: the
    emotions and the AUs present (drawn as chips; an absent AU is not one)."""
    return f"""
    SELECT image_id, crop_id, 'emotion' AS kind, emotion AS label, confidence AS probability, threshold,
        true AS present, annotator
    FROM emotion_labels WHERE label_source = 'pseudo' AND crop_id IS NOT NULL AND {in_scope}
        AND {counts_sql("emotion")}
    UNION ALL
    SELECT image_id, crop_id, 'au', 'AU' || au, probability, threshold, present, annotator
    FROM au_labels WHERE label_source = 'pseudo' AND present AND crop_id IS NOT NULL AND {in_scope}
        AND {counts_sql("au")}
    ORDER BY image_id, crop_id, kind, label"""


# ---- FiftyOne documents ---------------------------------------------------------------------
# Labels are written in FiftyOne's stored form (what `label.to_mongo_dict()` gives): building
# FiftyOne's document objects for 10k samples costs more than everything else in a sync.
def _oid(*parts: object):
    from bson import ObjectId

    return ObjectId(hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:24])


def _label(cls: str, _id, tags: Sequence[str] = (), **fields) -> dict:
    return {"_id": _id, "_cls": cls, "tags": list(tags), **{k: v for k, v in fields.items() if v is not None}}


def _clip01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def relative_box(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> list[float]:
    """Pixel corners -> FiftyOne's [x, y, width, height] in 0..1, clipped to the image."""
    w, h = max(w, 1), max(h, 1)
    left, top, right, bottom = _clip01(x1 / w), _clip01(y1 / h), _clip01(x2 / w), _clip01(y2 / h)
    return [left, top, max(right - left, 0.0), max(bottom - top, 0.0)]


def _crop_square(x1, y1, x2, y2, w, h, margin) -> list[float]:
    """The square labeling.detection.crops cut (labeling.detection.geometry.crop_squares of the clipped box)."""
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    (cx,), (cy,), (side,) = crop_squares(np.array([[x1, y1, x2, y2]]), margin)
    half = float(side) / 2
    return relative_box(cx - half, cy - half, cx + half, cy + half, w, h)


def view_fields(multi_label: bool, labels: Sequence[str]) -> dict[str, str]:
    """The face attributes a model view sets (name -> "str" | "float" | "list"), so the dataset can
    declare them: `p_<label>` per label, and the model's calls: the top class of a one-of-several
    task (emotions), the labels by call of a multi-label one (AUs)."""
    calls = (
        {"aus_present": "list", "aus_unsure": "list", "aus_absent": "list", "au_model": "str"}
        if multi_label
        else {
            "model_emotion": "str",
            "model_emotion_p": "float",
            "model_emotion_call": "str",
            "emotion_model": "str",
        }
    )
    return {**calls, **{f"p_{lab}": "float" for lab in labels}}


def _view_fields(v: ViewRow) -> dict[str, Any]:
    """A face's attributes from one model view: every label's probability (`p_happy`, `p_AU12`),
    and the calls: the AUs present / unsure / absent by name, or the top emotion with its call."""
    out: dict[str, Any] = {f"p_{lab}": p for lab, p in zip(v.labels, v.probabilities, strict=True)}
    if CALL_RULES[v.task].multi_label:
        for state in ("present", "unsure", "absent"):
            out[f"aus_{state}"] = [
                named(lab) for lab, s in zip(v.labels, v.states, strict=True) if s == state
            ]
        out["au_model"] = v.model_id
    else:
        top = max(range(len(v.labels)), key=lambda k: v.probabilities[k])
        out.update(
            model_emotion=v.labels[top],
            model_emotion_p=v.probabilities[top],
            model_emotion_call=v.states[top],
            emotion_model=v.model_id,
        )
    return out


def _calls_first(fields: dict[str, Any]) -> dict[str, Any]:
    """A face's model-view attributes, the calls before the probabilities."""
    return dict(sorted(fields.items(), key=lambda kv: kv[0].startswith("p_")))


def documents(image_id: str, im: WarehouseImage, home: str) -> dict[str, Any]:
    """The stored form of the sample's embedded documents (DOCS), by field; `home` is the
    data root the crop paths are made absolute with."""
    gt = None
    if (g := im.ground_truth) is not None:
        gt = _label(
            "Classification",
            _oid(image_id, "ground_truth"),
            label=g.emotion,
            confidence=g.confidence,
            label_source=g.label_source,
            annotator=g.annotator,
            n_labels=g.n_labels,
        )
    aus = None
    if im.aus:
        aus = {
            "_cls": "Classifications",
            "classifications": [
                _label(
                    "Classification",
                    _oid(image_id, "au", a.au),
                    label=f"AU{a.au}",
                    confidence=a.probability,
                    au=a.au,
                    intensity=a.intensity,
                    label_source=a.label_source,
                    annotator=a.annotator,
                )
                for a in im.aus
            ],
        }
    detections = None
    if im.detections:
        detections = {
            "_cls": "Detections",
            "detections": [
                _label(
                    "Detection",
                    _oid(d.detection_id),
                    label=d.label,
                    bounding_box=relative_box(d.x1, d.y1, d.x2, d.y2, d.width, d.height),
                    confidence=d.score,
                    detector=d.detector,
                    weights_sha256=d.weights_sha256,
                    detection_id=d.detection_id,
                )
                for d in im.detections
            ],
        }
    crops = None
    if im.crops:
        crops = {
            "_cls": "Detections",
            "detections": [
                _label(
                    "Detection",
                    _oid(c.crop_id),
                    label=c.label,
                    bounding_box=_crop_square(c.x1, c.y1, c.x2, c.y2, c.width, c.height, c.margin),
                    confidence=c.score,
                    crop_id=c.crop_id,
                    detection_id=c.detection_id,
                    crop_path=f"{home}/{c.media_path}",
                    gray_path=f"{home}/{c.gray_media_path}",
                    size=c.size,
                    gray_size=c.gray_size,
                    margin=c.margin,
                    angle=c.angle,
                    face_px=c.face_px,
                    blur=c.blur,
                    brightness=c.brightness,
                    too_small=c.too_small,
                    too_blurry=c.too_blurry,
                )
                for c in im.crops
            ],
        }
    faces = None
    if im.faces:
        views: dict[str, dict[str, Any]] = defaultdict(dict)
        for v in sorted(im.views or (), key=lambda v: CALL_RULES[v.task].multi_label):  # emotion first
            views[v.crop_id].update(_view_fields(v))
        faces = {
            "_cls": "Detections",
            "detections": [
                _label(
                    "Detection",
                    _oid(f.crop_id, "emotion"),
                    tags=f.tags,
                    label=f.emotion,
                    bounding_box=relative_box(f.x1, f.y1, f.x2, f.y2, f.width, f.height),
                    confidence=f.confidence,
                    # why the face waits and what the models think first: the App's tooltip
                    # lists a label's attributes in this order
                    review_priority=f.priority,
                    review_reasons=list(f.reasons) if f.reasons else None,
                    review_detail=f.detail,
                    **_calls_first(views[f.crop_id]),
                    crop_id=f.crop_id,
                    label_source=f.label_source,
                    annotator=f.annotator,
                    threshold=f.threshold,
                    excluded=f.excluded,
                    ferlab_label=f.emotion,
                    ferlab_tags=list(f.tags),
                )
                for f in im.faces
            ],
        }
    predictions = None
    if im.predictions:
        predictions = {
            "_cls": "Classifications",
            "classifications": [
                _label(
                    "Classification",
                    _oid(p.crop_id, "prediction", p.kind, p.label, p.annotator),
                    label=p.label,
                    confidence=p.probability,
                    crop_id=p.crop_id,
                    kind=p.kind,
                    threshold=p.threshold,
                    present=p.present,
                    model=p.annotator,
                )
                for p in im.predictions
            ],
        }
    width, height = im.size
    metadata = {"_cls": "ImageMetadata", "width": width, "height": height}
    return {
        "metadata": metadata,
        "ground_truth": gt,
        "aus": aus,
        "detections": detections,
        "face_crops": crops,
        "face_emotions": faces,
        "predictions": predictions,
    }
