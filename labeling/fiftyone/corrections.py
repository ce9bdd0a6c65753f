"""A curator's work in FiftyOne, back into the warehouse: edited face emotions become human
labels, the tags `reject` / `relabel` become exclusions and review-queue rows.

`pull_corrections(wh, dataset_name)` reads the dataset labeling.fiftyone.sync keeps and
compares each face (`face_emotions` detection) with what ferlab last synced or pulled there
(`ferlab_label`, `ferlab_tags`; for sample tags the sample field `ferlab_tags`):

- **An edited emotion** (the face's label differs from `ferlab_label` and is one of EMOTIONS)
  is an `emotion_labels` row: label_source `human`, the face's crop_id and image_id, annotator
  `fiftyone:<user>`. Editing the face again supersedes it (the table is versioned); the human
  label then wins over every other source, in the dataset versions and in the next sync. A
  label that is no emotion, or a deleted label, is reported (`invalid`) and not written.
- **`reject`** added to a face (label tag) or to a sample holding one face (sample tag; on
  DISFA and FER-2013, one-face sources, a sample tag means each of the image's faces) is an
  `exclusions` row, excluded, reason `reject`: the dataset versions leave the face out.
  Removing the tag writes excluded = false, which lifts this annotator's exclusion (an
  exclusion another annotator wrote stands: the next sync shows the tag again).
- **`relabel`** is a `review_queue` row (queue `fiftyone`, reason `relabel`, priority 1) and
  also an exclusion with reason `relabel` until the face has a new label: a face a curator
  says is mislabeled should not train a model meanwhile. The exclusion is lifted when the
  curator edits the face's emotion (the same pull), when a human label of the face written
  after the exclusion arrives from anywhere (Label Studio; checked on every pull), or when the
  tag is removed. A face tagged both ways is rejected.
- A sample tag on an image of several faces of a multi-face source cannot say which face it
  means: it is counted (`ambiguous`) and ignored; tag the face instead.

The warehouse is written first, then the dataset is marked (ferlab_* set to what was pulled,
edited faces shown as `human`), so a pull killed in between is completed by the next one,
and pulling twice adds nothing. No Dagster here: the `fiftyone_corrections` asset and
`ferlab review pull` call this.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from labeling.fiftyone.docs import CURATOR_TAGS
from labeling.fiftyone.sync import DEFAULT_NAME, check_dataset_root, import_fiftyone
from warehouse.schemas import EMOTIONS, TABLES
from warehouse.store import Warehouse
from warehouse.versions import ONE_FACE_SOURCES

QUEUE = "fiftyone"  # review_queue.queue of the faces curators tag `relabel`
RELABEL_PRIORITY = 1.0
_FACE_PATHS = ("id", "crop_id", "label", "tags", "ferlab_label", "ferlab_tags")


@dataclass(frozen=True)
class CorrectionsReport:
    """What a pull found and wrote."""

    edits: int = 0  # faces whose edited emotion was written as a human label (new or changed)
    rejects: int = 0  # faces newly excluded with reason `reject`
    unrejects: int = 0  # exclusions lifted (tag removed, or relabel done)
    relabels: int = 0  # faces tagged `relabel`: review-queue rows added
    ambiguous: int = 0  # sample tags on images with several faces (ignored)
    invalid: list[str] = field(default_factory=list)  # "crop_id: label" edits that are no emotion

    def __str__(self) -> str:
        text = (
            f"edits {self.edits}, rejects {self.rejects}, lifted {self.unrejects}, relabels {self.relabels}"
        )
        if self.ambiguous:
            text += f"; {self.ambiguous} sample tags on images of several faces ignored (tag the face)"
        if self.invalid:
            text += f"; {len(self.invalid)} edits are no emotion ({', '.join(self.invalid[:3])})"
        return text


@dataclass
class _Face:
    label_id: str
    sample_id: str
    image_id: str
    crop_id: str
    label: str | None
    synced: str | None
    added: set[str] = field(default_factory=set)  # curator tags added since the last sync / pull
    removed: set[str] = field(default_factory=set)
    tags: list[str] = field(default_factory=list)


def _curator(tags) -> set[str]:
    return set(tags or ()) & set(CURATOR_TAGS)


def _read_faces(ds) -> tuple[list[_Face], dict[str, list[str]], int]:
    """The faces of the dataset with their changes, the samples' curator tags (sample id ->
    tags) and how many sample tags were ambiguous."""
    paths = [f"face_emotions.detections.{p}" for p in _FACE_PATHS]
    sids, image_ids, sources, tags, pulled, *columns = ds.values(
        ["id", "image_id", "source", "tags", "ferlab_tags", *paths]
    )
    faces: list[_Face] = []
    sample_tags: dict[str, list[str]] = {}
    ambiguous = 0
    for k, sid in enumerate(sids):
        if image_ids[k] is None:
            continue  # a sample added by hand: not the sync's
        mine = []
        for label_id, crop_id, label, ftags, synced, synced_tags in zip(*(c[k] or [] for c in columns)):
            if crop_id is None:
                continue
            face = _Face(label_id, sid, image_ids[k], crop_id, label, synced, tags=sorted(_curator(ftags)))
            face.added = _curator(ftags) - _curator(synced_tags)
            face.removed = _curator(synced_tags) - _curator(ftags)
            faces.append(face)
            mine.append(face)
        now, before = _curator(tags[k]), _curator(pulled[k])
        if now == before:
            continue
        sample_tags[sid] = sorted(now)
        if len(mine) == 1 or (mine and sources[k] in ONE_FACE_SOURCES):
            for face in mine:
                face.added |= now - before
                face.removed |= before - now
        else:
            ambiguous += 1
    return faces, sample_tags, ambiguous


def _current_exclusions(wh: Warehouse, annotator: str) -> dict[str, tuple[bool, str, dt.datetime | None]]:
    rows = wh.sql(
        "SELECT crop_id, excluded, reason, recorded_at FROM exclusions WHERE annotator = $a",
        params={"a": annotator},
    ).to_pylist()
    return {r["crop_id"]: (r["excluded"], r["reason"], r["recorded_at"]) for r in rows}


def _relabeled_since(wh: Warehouse, annotator: str) -> set[str]:
    """Faces excluded by `annotator` for `relabel` that got a human label afterwards."""
    rows = wh.sql(
        "SELECT DISTINCT x.crop_id FROM exclusions x JOIN emotion_labels e ON e.crop_id = x.crop_id "
        "WHERE x.annotator = $a AND x.excluded AND x.reason = 'relabel' AND e.label_source = 'human' "
        "AND e.recorded_at > x.recorded_at",
        params={"a": annotator},
    )
    return set(rows.column("crop_id").to_pylist())


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = TABLES[name].schema
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def pull_corrections(
    wh: Warehouse, dataset_name: str = DEFAULT_NAME, user: str = "curator"
) -> CorrectionsReport:
    """Write the curator's edits and tags in the FiftyOne dataset `dataset_name` to the
    warehouse (module docstring); annotator `fiftyone:<user>`.

    Raises LookupError when the dataset does not exist (sync it first), ConfigError when it
    holds another data root (labeling.fiftyone.sync.check_dataset_root) or the database is
    another root's."""
    fo = import_fiftyone(wh.home)
    if not fo.dataset_exists(dataset_name):
        raise LookupError(f"no FiftyOne dataset {dataset_name!r}: run the sync first (ferlab review)")
    ds = fo.load_dataset(dataset_name)
    check_dataset_root(ds, wh.home)
    if "face_emotions" not in ds.get_field_schema():
        raise LookupError(f"FiftyOne dataset {dataset_name!r} has no face_emotions: re-sync it first")
    annotator = f"fiftyone:{user}"
    faces, sample_tags, ambiguous = _read_faces(ds)
    current = _current_exclusions(wh, annotator)

    labels, exclusions, queue, invalid = [], {}, [], []
    edited: list[_Face] = []
    for f in faces:
        if f.label != f.synced:
            if f.label in EMOTIONS:
                labels.append(
                    dict(
                        image_id=f.image_id,
                        crop_id=f.crop_id,
                        emotion=f.label,
                        label_source="human",
                        annotator=annotator,
                    )
                )
                edited.append(f)
            else:
                invalid.append(f"{f.crop_id}: {f.label}")
        held = current.get(f.crop_id, (False, "", None))
        if "reject" in f.added:
            exclusions[f.crop_id] = (True, "reject")
        elif "reject" in f.removed and held[:2] == (True, "reject"):
            exclusions[f.crop_id] = (False, "reject")
        if "relabel" in f.added:
            queue.append(f)
            if "reject" not in f.added and f.label == f.synced and not held[0]:
                exclusions[f.crop_id] = (True, "relabel")
        elif "relabel" in f.removed and held[:2] == (True, "relabel") and f.crop_id not in exclusions:
            exclusions[f.crop_id] = (False, "relabel")
        if f.label != f.synced and f.label in EMOTIONS and held[:2] == (True, "relabel"):
            exclusions.setdefault(f.crop_id, (False, "relabel"))
    for crop_id in _relabeled_since(wh, annotator):
        if current.get(crop_id, (False,))[0] and crop_id not in exclusions:
            exclusions[crop_id] = (False, "relabel")

    # The warehouse first: a pull killed after this is completed by the next one. The queue
    # rows before the labels: a face relabeled in the same pull reads as answered.
    relabels = 0
    if queue:
        found = wh.sql(
            "SELECT crop_id, media_path FROM crops WHERE list_contains($ids, crop_id)",
            params={"ids": [f.crop_id for f in queue]},
        ).to_pydict()
        paths = dict(zip(found["crop_id"], found["media_path"]))
        now = dt.datetime.now(dt.UTC)
        rows = [
            dict(
                queue=QUEUE,
                crop_id=f.crop_id,
                image_id=f.image_id,
                media_path=paths.get(f.crop_id, ""),
                reason="relabel",
                priority=RELABEL_PRIORITY,
                detail=f"tagged relabel in FiftyOne dataset {dataset_name} ({annotator})",
                queued_at=now,
            )
            for f in queue
        ]
        relabels = wh.append("review_queue", _table("review_queue", rows))

    written = wh.append_labels("emotion_labels", _table("emotion_labels", labels)) if labels else None
    changed = {c: v for c, v in exclusions.items() if current.get(c, (None, None))[:2] != v}
    if changed:
        rows = [dict(crop_id=c, excluded=e, reason=r, annotator=annotator) for c, (e, r) in changed.items()]
        wh.append_labels("exclusions", _table("exclusions", rows))
    _mark_pulled(ds, faces, edited, sample_tags, annotator)
    return CorrectionsReport(
        edits=(written.added + written.updated) if written else 0,
        rejects=sum(v == (True, "reject") for v in changed.values()),
        unrejects=sum(not v[0] for v in changed.values()),
        relabels=relabels,
        ambiguous=ambiguous,
        invalid=invalid,
    )


def _mark_pulled(ds, faces: list[_Face], edited: list[_Face], sample_tags: dict, annotator: str) -> None:
    """Record in the dataset what this pull took: ferlab_* = the faces' (and samples')
    current values, so that the next pull sees only what changes after this one."""
    seen = [f for f in faces if f.label != f.synced or f.added or f.removed]
    if seen:
        ds.set_label_values(
            "face_emotions.detections.ferlab_label", {f.label_id: f.label for f in seen}, progress=False
        )
        ds.set_label_values(
            "face_emotions.detections.ferlab_tags", {f.label_id: f.tags for f in seen}, progress=False
        )
    if edited:
        source = defaultdict(dict)
        for f in edited:
            source["label_source"][f.label_id] = "human"
            source["annotator"][f.label_id] = annotator
        for attr, values in source.items():
            ds.set_label_values(f"face_emotions.detections.{attr}", values, progress=False)
    if sample_tags:
        ds.set_values("ferlab_tags", sample_tags, key_field="id")
