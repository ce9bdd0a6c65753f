"""The warehouse as a FiftyOne dataset, for curators to browse, filter and tag in the App.

`sync_fiftyone(wh)` keeps one persistent dataset (default "ferlab") in step with the
warehouse: one sample per row of `images`, keyed by image_id.

    filepath      absolute path of the stored media file
    metadata      fo.ImageMetadata(width, height)
    image_id, source, subject, video_id, split, batch, frame_index   as in `images`
    ground_truth  fo.Classification: the image's best emotion label, human > gold > pseudo
                  > weak (then the most confident, then the annotator's name), with
                  label_source, annotator and n_labels (how many labels the image has)
    aus           fo.Classifications: the AUs present ("AU12", ...) by each AU's best label
                  (same order of sources), with au, intensity, label_source, annotator;
                  confidence is the model's probability for model labels
    detections    fo.Detections: the `detections` rows, boxes as FiftyOne's relative
                  [x, y, w, h] clipped to the image, confidence = score, detector,
                  weights_sha256, detection_id
    face_crops    fo.Detections: one per `crops` row, for `dataset.to_patches("face_crops")`.
                  The box is the square the crop was cut from (the detection's box grown by
                  the crop's margin, before the eye-levelling turn, clipped to the image);
                  attributes crop_path / gray_path (absolute paths of the 224 px and 48 px
                  files), crop_id, detection_id, size, gray_size, margin, angle, face_px,
                  blur, brightness, too_small, too_blurry
    warehouse_hash  a digest of all of the above, to find what changed

Crops are a patches field, not a second dataset: in FiftyOne a per-object view is
`to_patches(field)`, which gives one patch per crop with its quality attributes in the
sidebar while staying joined to its image (its ground truth, its other detections, the
sample's tags) and needs no second dataset to keep in sync. The exact 224 px file a model
sees is named in crop_path.

Re-syncing is idempotent: new images are added, images whose warehouse rows changed are
rewritten in place (sample ids, tags and fields curators added survive), samples of images no
longer in the warehouse are removed. The fields above belong to the sync: a label corrected
in the App is overwritten when its image next changes, so corrections go to the warehouse
(as human labels), from where they come back here. All writes are batched (`add_samples`, one
`set_values` per field keyed by sample id); unchanged samples cost nothing but a digest.
Label ids are derived from the warehouse keys (detection_id, crop_id, image and AU), so a
re-sync gives a label the same id.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from warehouse.schemas import EMOTIONS, LABEL_SOURCES, SOURCES
from warehouse.store import Warehouse, quote_literal

DEFAULT_NAME = "ferlab"
# Bump when the conversion below changes: every sample's digest changes and it is rewritten.
_FORMAT = 1
_MARK = "ferlab_sync"  # key in dataset.info that says a dataset is this module's
_SCALARS = ("image_id", "source", "subject", "video_id", "split", "batch", "frame_index")
_DOCS = ("metadata", "ground_truth", "aus", "detections", "face_crops")


@dataclass(frozen=True)
class SyncReport:
    added: int
    updated: int
    removed: int
    total: int  # samples in the dataset afterwards

    def __str__(self) -> str:
        return f"added {self.added}, updated {self.updated}, removed {self.removed}; {self.total} samples"


def _fiftyone():
    """Import FiftyOne with its usage tracking off unless the environment says otherwise."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo


# ---- reading the warehouse ------------------------------------------------------------------
def _rank(column: str = "label_source") -> str:
    whens = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(LABEL_SOURCES))
    return f"CASE {column} {whens} ELSE {len(LABEL_SOURCES)} END"


def _rows(con, query: str) -> list[dict[str, Any]]:
    return con.sql(query).to_arrow_table().to_pylist()


@dataclass(slots=True)
class _Image:
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
        parts = (_FORMAT, self.filepath, self.scalars, self.size, self.ground_truth, self.aus)
        self.digest = hashlib.sha1(repr((parts, self.detections, self.crops)).encode()).hexdigest()


def _read_warehouse(wh: Warehouse, sources: Sequence[str] | None) -> dict[str, _Image]:
    where = "" if sources is None else "WHERE source IN (" + ", ".join(map(quote_literal, sources)) + ")"
    home = str(wh.home)
    with wh.connect() as con:
        con.execute(
            "CREATE TEMP TABLE scope AS SELECT image_id, source, subject, video_id, frame_index, "
            f"split, batch, width, height, media_path FROM images {where}"
        )
        images = {
            r["image_id"]: _Image(
                f"{home}/{r['media_path']}", tuple(r[k] for k in _SCALARS), (r["width"], r["height"])
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
                    row_number() OVER (PARTITION BY image_id ORDER BY {_rank()},
                      confidence DESC NULLS LAST, annotator, emotion) AS rank
                  FROM emotion_labels WHERE {in_scope}) WHERE rank = 1""",
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
                  SELECT *, row_number() OVER (PARTITION BY image_id, au ORDER BY {_rank()},
                    probability DESC NULLS LAST, annotator) AS rank
                  FROM au_labels WHERE {in_scope}) WHERE rank = 1 AND present
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
    """The square labeling.crops cut: the clipped box's longer side * (1 + 2 margin), centered."""
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    half = max(x2 - x1, y2 - y1) * (1 + 2 * margin) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return _relative(cx - half, cy - half, cx + half, cy + half, w, h)


def _documents(image_id: str, im: _Image, home: str) -> dict[str, Any]:
    """The stored form of the sample's embedded documents."""
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


def _declare_schema(ds) -> None:
    """Every field and label attribute, declared up front: the App's sidebar filters work
    from the first sync, and values written later always match a declared type."""
    fo = _fiftyone()
    doc = fo.EmbeddedDocumentField
    fields: list[tuple[str, Any, dict]] = [
        ("image_id", fo.StringField, {}),
        ("source", fo.StringField, {}),
        ("subject", fo.StringField, {}),
        ("video_id", fo.StringField, {}),
        ("split", fo.StringField, {}),
        ("batch", fo.StringField, {}),
        ("frame_index", fo.IntField, {}),
        ("warehouse_hash", fo.StringField, {}),
        ("ground_truth", doc, {"embedded_doc_type": fo.Classification}),
        ("ground_truth.label_source", fo.StringField, {}),
        ("ground_truth.annotator", fo.StringField, {}),
        ("ground_truth.n_labels", fo.IntField, {}),
        ("aus", doc, {"embedded_doc_type": fo.Classifications}),
        ("aus.classifications.au", fo.IntField, {}),
        ("aus.classifications.intensity", fo.FloatField, {}),
        ("aus.classifications.label_source", fo.StringField, {}),
        ("aus.classifications.annotator", fo.StringField, {}),
        ("detections", doc, {"embedded_doc_type": fo.Detections}),
        ("detections.detections.detector", fo.StringField, {}),
        ("detections.detections.weights_sha256", fo.StringField, {}),
        ("detections.detections.detection_id", fo.StringField, {}),
        ("face_crops", doc, {"embedded_doc_type": fo.Detections}),
    ]
    crop_attrs = {
        "crop_id": fo.StringField,
        "detection_id": fo.StringField,
        "crop_path": fo.StringField,
        "gray_path": fo.StringField,
        "size": fo.IntField,
        "gray_size": fo.IntField,
        "margin": fo.FloatField,
        "angle": fo.FloatField,
        "face_px": fo.FloatField,
        "blur": fo.FloatField,
        "brightness": fo.FloatField,
        "too_small": fo.BooleanField,
        "too_blurry": fo.BooleanField,
    }
    fields += [(f"face_crops.detections.{k}", t, {}) for k, t in crop_attrs.items()]
    if ds.media_type != "image":
        # A new dataset's metadata field is the generic Metadata until its media type is set.
        ds.media_type = "image"
    schema = ds.get_field_schema(flat=True)
    for path, ftype, kwargs in fields:
        if path not in schema:
            ds.add_sample_field(path, ftype, **kwargs)


def _open_dataset(name: str, home: str):
    fo = _fiftyone()
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if len(ds) and _MARK not in ds.info:
            raise ValueError(f"FiftyOne dataset {name!r} was not made by sync_fiftyone; choose another name")
    else:
        ds = fo.Dataset(name)
    ds.persistent = True
    _declare_schema(ds)
    # One sample per image, even if two syncs run at once (samples without an image_id, added
    # by hand, are not the sync's and are left alone).
    ds.create_index("image_id", unique=True, partialFilterExpression={"image_id": {"$type": "string"}})
    ds.info[_MARK] = {"version": _FORMAT, "warehouse": home}
    ds.classes["ground_truth"] = list(EMOTIONS)
    ds.save()
    return ds


def _set_fields(
    ds, ids: list[str], image_ids: list[str], wanted: dict[str, _Image], home: str, new: bool
) -> None:
    """Write the warehouse-derived fields of the samples `ids` (batched: one bulk write per
    field), the digest last, so that a sync killed midway leaves the sample marked stale.
    New samples got filepath, metadata and the scalar fields from add_samples."""
    if not ids:
        return
    images = [wanted[i] for i in image_ids]
    values: dict[str, list] = {}
    if not new:
        values["filepath"] = [im.filepath for im in images]
        for k, field in enumerate(_SCALARS[1:], start=1):
            values[field] = [im.scalars[k] for im in images]
    docs = [_documents(i, im, home) for i, im in zip(image_ids, images)]
    for field in _DOCS[0 if not new else 1 :]:
        values[field] = [d[field] for d in docs]
    for field, column in values.items():
        # validate=False: labels are in FiftyOne's stored form, of the types declared above.
        # A new sample's missing field reads as None: writing None there is a wasted update.
        ds.set_values(field, dict(zip(ids, column)), key_field="id", validate=False, skip_none=new)
    ds.set_values("warehouse_hash", {s: im.digest for s, im in zip(ids, images)}, key_field="id")


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def sync_fiftyone(
    wh: Warehouse, name: str = DEFAULT_NAME, sources: Sequence[str] | None = None
) -> SyncReport:
    """Make the persistent FiftyOne dataset `name` show the warehouse's images and labels.

    With `sources`, only images of those sources are added, updated or removed; samples of
    other sources are left as they are. Returns what changed."""
    if isinstance(sources, str):
        sources = [sources]
    if sources is not None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; known: {list(SOURCES)}")
        sources = sorted(set(sources))
    fo = _fiftyone()
    home = str(wh.home)
    wanted = _read_warehouse(wh, sources)
    ds = _open_dataset(name, home)

    sample_ids, image_ids, sample_sources, digests = ds.values(["id", "image_id", "source", "warehouse_hash"])
    existing: dict[str, tuple[str, str | None]] = {}
    stale: list[str] = []
    for sid, image_id, source, digest in zip(sample_ids, image_ids, sample_sources, digests):
        if image_id is None or (sources is not None and source not in sources and image_id not in wanted):
            continue  # not ours, or outside the sources being synced
        if image_id in existing or image_id not in wanted:
            stale.append(sid)
        else:
            existing[image_id] = (sid, digest)

    changed = [
        (sid, image_id) for image_id, (sid, digest) in existing.items() if digest != wanted[image_id].digest
    ]
    if changed:
        _set_fields(ds, [s for s, _ in changed], [i for _, i in changed], wanted, home, new=False)

    new = [image_id for image_id in wanted if image_id not in existing]
    for part in _chunks(new, 10_000):
        samples = [
            fo.Sample(
                filepath=wanted[i].filepath,
                metadata=fo.ImageMetadata(width=wanted[i].size[0], height=wanted[i].size[1]),
                **dict(zip(_SCALARS, wanted[i].scalars)),
            )
            for i in part
        ]
        added_ids = ds.add_samples(samples, progress=False)
        del samples  # in-memory samples would be reloaded by every set_values below
        _set_fields(ds, added_ids, part, wanted, home, new=True)

    if stale:
        ds.delete_samples(stale)
    ds.info[_MARK] = {
        "version": _FORMAT,
        "warehouse": home,
        "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ds.save()
    return SyncReport(added=len(new), updated=len(changed), removed=len(stale), total=len(ds))


# ---- the App ----------------------------------------------------------------------------------
def _fiftyone_server(address: str, port: int) -> bool:
    import requests

    try:
        return "version" in requests.get(f"http://{address}:{port}/fiftyone", timeout=2).json()
    except Exception:
        return False


def _check_port(address: str, port: int) -> None:
    """Fail fast when something other than a FiftyOne server holds the port (FiftyOne would
    wait a minute for its server, then time out)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
            return
        except OSError as exc:
            if _fiftyone_server(address, port):
                return  # FiftyOne's own server: the session attaches to it
            raise OSError(f"{address}:{port} is in use by another program; pick another port") from exc


def launch_review(name: str = DEFAULT_NAME, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Serve the FiftyOne App on the dataset `name` at http://address:port until Ctrl-C
    (SIGINT) or SIGTERM, then stop the App's server."""
    import signal
    import threading

    fo = _fiftyone()
    if not fo.dataset_exists(name):
        raise LookupError(f"no FiftyOne dataset {name!r}: run the sync first")
    _check_port(address, port)
    dataset = fo.load_dataset(name)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        # Also when started in the background with SIGINT ignored, and by process managers.
        handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    session = None
    try:
        session = fo.launch_app(dataset, remote=True, address=address, port=port, auto=False)
        print(
            f"FiftyOne App on http://{address}:{port} ({len(dataset)} samples in {name!r}); Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if session is not None:
            session.close()
        # (interrupted while starting: the App's server stops when this process exits)
