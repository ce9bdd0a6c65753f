"""What the warehouse says about each image, read in one pass (SQL over images, labels,
detections and crops) and written as the stored form of FiftyOne's labels. No FiftyOne import
here: labeling.fiftyone_sync writes these documents into a dataset.

Label precedence (which emotion / AU label an image shows) is warehouse.precedence's, the
same the dataset versions use. Label ids are derived from the warehouse keys (detection_id,
crop_id, image and AU), so a re-sync gives a label the same id.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeling.geometry import crop_squares
from warehouse.precedence import au_order_sql, counts_sql, emotion_order_sql
from warehouse.store import Warehouse, quote_literal

# Bump when the conversion below changes: every sample's digest changes and it is rewritten.
FORMAT = 1
SCALARS = ("image_id", "source", "subject", "video_id", "split", "batch", "frame_index")
DOCS = ("metadata", "ground_truth", "aus", "detections", "face_crops")


def _rows(con, query: str) -> list[dict[str, Any]]:
    return con.sql(query).to_arrow_table().to_pylist()


@dataclass(slots=True)
class WarehouseImage:
    """What the warehouse says about one image, as plain values (hashable by repr)."""

    filepath: str
    scalars: tuple
    size: tuple[int, int]
    ground_truth: tuple | None = None
    aus: list[tuple] | None = None
    detections: list[tuple] | None = None
    crops: list[tuple] | None = None
    digest: str = ""

    def seal(self) -> None:
        parts = (FORMAT, self.filepath, self.scalars, self.size, self.ground_truth, self.aus)
        self.digest = hashlib.sha1(repr((parts, self.detections, self.crops)).encode()).hexdigest()


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
            images[r["image_id"]].ground_truth = (
                r["emotion"],
                r["label_source"],
                r["confidence"],
                r["annotator"],
                r["n_labels"],
            )
        aus = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT image_id, au, intensity, label_source, probability, annotator FROM (
                  SELECT *, row_number() OVER (PARTITION BY image_id, au ORDER BY {au_order_sql()}) AS rank
                  FROM au_labels WHERE {in_scope} AND {counts_sql("au")}) WHERE rank = 1 AND present
                ORDER BY image_id, au""",
        ):
            aus[r["image_id"]].append(
                (r["au"], r["intensity"], r["label_source"], r["probability"], r["annotator"])
            )
        dets = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT image_id, detection_id, label, x1, y1, x2, y2, width, height, score, detector,
                  weights_sha256 FROM detections WHERE {in_scope}
                ORDER BY image_id, detector, score DESC, detection_id""",
        ):
            dets[r["image_id"]].append(tuple(r.values())[1:])
        crops = defaultdict(list)
        for r in _rows(
            con,
            f"""SELECT c.image_id, c.crop_id, c.detection_id, d.label, d.x1, d.y1, d.x2, d.y2, d.width,
                  d.height, d.score, c.margin, c.media_path, c.gray_media_path, c.size, c.gray_size,
                  c.angle, c.face_px, c.blur, c.brightness, c.too_small, c.too_blurry
                FROM crops c JOIN detections d USING (detection_id)
                WHERE c.{in_scope} ORDER BY c.image_id, c.crop_id""",
        ):
            crops[r["image_id"]].append(tuple(r.values())[1:])
    for image_id, found in aus.items():
        images[image_id].aus = found
    for image_id, found in dets.items():
        images[image_id].detections = found
    for image_id, found in crops.items():
        images[image_id].crops = found
    for im in images.values():
        im.seal()
    return images


# ---- FiftyOne documents ---------------------------------------------------------------------
# Labels are written in FiftyOne's stored form (what `label.to_mongo_dict()` gives): building
# FiftyOne's document objects for 10k samples costs more than everything else in a sync.
def _oid(*parts: object):
    from bson import ObjectId

    return ObjectId(hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:24])


def _label(cls: str, _id, **fields) -> dict:
    return {"_id": _id, "_cls": cls, "tags": [], **{k: v for k, v in fields.items() if v is not None}}


def _clip01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def _relative(x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> list[float]:
    """Pixel corners -> FiftyOne's [x, y, width, height] in 0..1, clipped to the image."""
    w, h = max(w, 1), max(h, 1)
    left, top, right, bottom = _clip01(x1 / w), _clip01(y1 / h), _clip01(x2 / w), _clip01(y2 / h)
    return [left, top, max(right - left, 0.0), max(bottom - top, 0.0)]


def _crop_square(x1, y1, x2, y2, w, h, margin) -> list[float]:
    """The square labeling.crops cut (labeling.geometry.crop_squares of the clipped box)."""
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    (cx,), (cy,), (side,) = crop_squares(np.array([[x1, y1, x2, y2]]), margin)
    half = float(side) / 2
    return _relative(cx - half, cy - half, cx + half, cy + half, w, h)


def documents(image_id: str, im: WarehouseImage, home: str) -> dict[str, Any]:
    """The stored form of the sample's embedded documents (DOCS), by field; `home` is the
    data root the crop paths are made absolute with."""
    gt = None
    if im.ground_truth is not None:
        emotion, label_source, confidence, annotator, n_labels = im.ground_truth
        gt = _label(
            "Classification",
            _oid(image_id, "ground_truth"),
            label=emotion,
            confidence=confidence,
            label_source=label_source,
            annotator=annotator,
            n_labels=n_labels,
        )
    aus = None
    if im.aus:
        aus = {
            "_cls": "Classifications",
            "classifications": [
                _label(
                    "Classification",
                    _oid(image_id, "au", au),
                    label=f"AU{au}",
                    confidence=probability,
                    au=au,
                    intensity=intensity,
                    label_source=label_source,
                    annotator=annotator,
                )
                for au, intensity, label_source, probability, annotator in im.aus
            ],
        }
    detections = None
    if im.detections:
        detections = {
            "_cls": "Detections",
            "detections": [
                _label(
                    "Detection",
                    _oid(detection_id),
                    label=label,
                    bounding_box=_relative(x1, y1, x2, y2, w, h),
                    confidence=score,
                    detector=detector,
                    weights_sha256=sha,
                    detection_id=detection_id,
                )
                for detection_id, label, x1, y1, x2, y2, w, h, score, detector, sha in im.detections
            ],
        }
    crops = None
    if im.crops:
        crops = {"_cls": "Detections", "detections": []}
        for (
            crop_id,
            detection_id,
            label,
            x1,
            y1,
            x2,
            y2,
            w,
            h,
            score,
            margin,
            path,
            gray_path,
            size,
            gray_size,
            angle,
            face_px,
            blur,
            brightness,
            too_small,
            too_blurry,
        ) in im.crops:
            crops["detections"].append(
                _label(
                    "Detection",
                    _oid(crop_id),
                    label=label,
                    bounding_box=_crop_square(x1, y1, x2, y2, w, h, margin),
                    confidence=score,
                    crop_id=crop_id,
                    detection_id=detection_id,
                    crop_path=f"{home}/{path}",
                    gray_path=f"{home}/{gray_path}",
                    size=size,
                    gray_size=gray_size,
                    margin=margin,
                    angle=angle,
                    face_px=face_px,
                    blur=blur,
                    brightness=brightness,
                    too_small=too_small,
                    too_blurry=too_blurry,
                )
            )
    width, height = im.size
    metadata = {"_cls": "ImageMetadata", "width": width, "height": height}
    return {
        "metadata": metadata,
        "ground_truth": gt,
        "aus": aus,
        "detections": detections,
        "face_crops": crops,
    }
