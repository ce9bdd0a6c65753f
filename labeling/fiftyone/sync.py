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
    face_emotions fo.Detections: one per face (`crops` row), on the face's detection box:
                  label = the face's emotion by the same precedence (None when it has none),
                  confidence, label_source, annotator, threshold of that label; crop_id;
                  excluded (a curator's exclusion holds), tags `reject` / `relabel` when an
                  exclusion with that reason holds; review_priority / review_reason while the
                  face waits in `review_queue`; ferlab_label / ferlab_tags: what ferlab synced
                  (do not edit: they tell a curator's edit from the synced value). Curators
                  edit a face's emotion here (its label) and tag a face `reject` / `relabel`;
                  labeling.fiftyone.corrections brings both back to the warehouse.
    predictions   fo.Classifications: the production models' pseudo labels of each face
                  (label "happy" / "AU12", confidence = the model's probability, threshold,
                  present, kind emotion|au, model, crop_id)
    ferlab_tags   (sample) the sample tags `reject` / `relabel` the last pull saw
    warehouse_hash  a digest of all of the above, to find what changed

The saved view `review_queue` shows the faces waiting in `review_queue` as patches, highest
priority first (`dataset.load_saved_view("review_queue")`).

Crops are a patches field, not a second dataset: in FiftyOne a per-object view is
`to_patches(field)`, which gives one patch per crop with its quality attributes in the
sidebar while staying joined to its image (its ground truth, its other detections, the
sample's tags) and needs no second dataset to keep in sync. The exact 224 px file a model
sees is named in crop_path.

Re-syncing is idempotent: new images are added, images whose warehouse rows changed are
rewritten in place (sample ids, tags and fields curators added survive), samples of images no
longer in the warehouse are removed. The fields above belong to the sync, except a face whose
label or tags a curator changed and nobody pulled yet (they differ from ferlab_label /
ferlab_tags): that face keeps the curator's label, tags and ferlab_* values, so a re-sync
never erases an edit; after `pull_corrections` the edit is a human label in the warehouse and
comes back from there. All writes are batched (`add_samples`, one
`set_values` per field keyed by sample id); unchanged samples cost nothing but a digest.
What each field holds is built by labeling.fiftyone.docs; the App is labeling.fiftyone.app.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from labeling.fiftyone.docs import (
    CURATOR_TAGS,
    DOCS,
    FORMAT,
    SCALARS,
    WarehouseImage,
    documents,
    read_warehouse,
)
from warehouse.schemas import EMOTIONS, SOURCES
from warehouse.store import Warehouse

DEFAULT_NAME = "ferlab"
REVIEW_VIEW = "review_queue"  # the saved view of the faces waiting for a curator
_MARK = "ferlab_sync"  # key in dataset.info that says a dataset is this module's


@dataclass(frozen=True)
class SyncReport:
    added: int
    updated: int
    removed: int
    total: int  # samples in the dataset afterwards

    def __str__(self) -> str:
        return f"added {self.added}, updated {self.updated}, removed {self.removed}; {self.total} samples"


def import_fiftyone():
    """Import FiftyOne with its usage tracking off unless the environment says otherwise."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo


def _declare_schema(ds) -> None:
    """Every field and label attribute, declared up front: the App's sidebar filters work
    from the first sync, and values written later always match a declared type."""
    fo = import_fiftyone()
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
        ("face_emotions", doc, {"embedded_doc_type": fo.Detections}),
        ("predictions", doc, {"embedded_doc_type": fo.Classifications}),
        ("ferlab_tags", fo.ListField, {"subfield": fo.StringField}),
    ]
    face_attrs = {
        "crop_id": fo.StringField,
        "label_source": fo.StringField,
        "annotator": fo.StringField,
        "threshold": fo.FloatField,
        "excluded": fo.BooleanField,
        "review_priority": fo.FloatField,
        "review_reason": fo.StringField,
        "ferlab_label": fo.StringField,
    }
    fields += [(f"face_emotions.detections.{k}", t, {}) for k, t in face_attrs.items()]
    fields.append(("face_emotions.detections.ferlab_tags", fo.ListField, {"subfield": fo.StringField}))
    prediction_attrs = {
        "crop_id": fo.StringField,
        "kind": fo.StringField,
        "threshold": fo.FloatField,
        "present": fo.BooleanField,
        "model": fo.StringField,
    }
    fields += [(f"predictions.classifications.{k}", t, {}) for k, t in prediction_attrs.items()]
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
    fo = import_fiftyone()
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
    ds.info[_MARK] = {"version": FORMAT, "warehouse": home}
    ds.classes["ground_truth"] = list(EMOTIONS)
    ds.classes["face_emotions"] = list(EMOTIONS)
    ds.save()
    return ds


def _save_review_view(ds) -> None:
    """The saved view REVIEW_VIEW: the faces waiting in review_queue, as patches, highest
    priority first. Its stages filter on the field, so it follows every later sync."""
    from fiftyone import ViewField as F

    view = (
        ds.filter_labels("face_emotions", F("review_priority").exists(), only_matches=True)
        .to_patches("face_emotions")
        .sort_by("face_emotions.review_priority", reverse=True)
    )
    ds.save_view(
        REVIEW_VIEW,
        view,
        description="Faces waiting in ferlab's review_queue, highest priority first",
        overwrite=True,
    )


_FACE_PATHS = ("crop_id", "label", "tags", "ferlab_label", "ferlab_tags")


def _pending_edits(ds, ids: list[str]) -> dict[str, dict[str, tuple]]:
    """sample id -> crop_id -> (label, tags, ferlab_label, ferlab_tags) of the faces a curator
    changed (label or curator tags) that no pull has seen yet."""
    paths = [f"face_emotions.detections.{p}" for p in _FACE_PATHS]
    sids, *columns = ds.select(ids).values(["id", *paths])
    pending: dict[str, dict[str, tuple]] = {}
    for k, sid in enumerate(sids):
        for crop_id, label, tags, synced, synced_tags in zip(*(c[k] or [] for c in columns)):
            curator = sorted(set(tags or ()) & set(CURATOR_TAGS))
            if label != synced or curator != sorted(synced_tags or ()):
                pending.setdefault(sid, {})[crop_id] = (label, list(tags or ()), synced, synced_tags)
    return pending


def _keep_edits(doc: dict | None, edits: dict[str, tuple]) -> None:
    """Put the curator's pending changes back into a face_emotions document being written."""
    for face in (doc or {}).get("detections", []):
        edit = edits.get(face.get("crop_id"))
        if edit is None:
            continue
        label, tags, synced, synced_tags = edit
        face["tags"] = tags
        for key, value in (("label", label), ("ferlab_label", synced), ("ferlab_tags", synced_tags)):
            if value is None:
                face.pop(key, None)
            else:
                face[key] = value


def _set_fields(
    ds, ids: list[str], image_ids: list[str], wanted: dict[str, WarehouseImage], home: str, new: bool
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
        for k, field in enumerate(SCALARS[1:], start=1):
            values[field] = [im.scalars[k] for im in images]
    docs = [documents(i, im, home) for i, im in zip(image_ids, images)]
    if not new:
        pending = _pending_edits(ds, ids)
        for sid, d in zip(ids, docs):
            if sid in pending:
                _keep_edits(d["face_emotions"], pending[sid])
    for field in DOCS[0 if not new else 1 :]:
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
    fo = import_fiftyone()
    home = str(wh.home)
    wanted = read_warehouse(wh, sources)
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
                **dict(zip(SCALARS, wanted[i].scalars)),
            )
            for i in part
        ]
        added_ids = ds.add_samples(samples, progress=False)
        del samples  # in-memory samples would be reloaded by every set_values below
        _set_fields(ds, added_ids, part, wanted, home, new=True)

    if stale:
        ds.delete_samples(stale)
    _save_review_view(ds)
    ds.info[_MARK] = {
        "version": FORMAT,
        "warehouse": home,
        "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ds.save()
    return SyncReport(added=len(new), updated=len(changed), removed=len(stale), total=len(ds))
