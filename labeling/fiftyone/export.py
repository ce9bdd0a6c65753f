"""A dataset version as detection sets (COCO, YOLO) and label tables, for tools outside ferlab.

`export_version(wh, version, out_dir, formats)` writes, under `out_dir`:

    coco/data/<image>            the version's images (copied; symlinked with link_media)
    coco/<split>.json            COCO detection labels of each split (train, val, test)
    yolo/dataset.yaml            YOLOv5/ultralytics layout: images/<split>/, labels/<split>/*.txt
    tables/manifest.parquet|csv  the version's manifest: one row per face with its emotion, AUs,
                                 split, group and media paths (DATASET_MANIFEST)
    tables/boxes.parquet|csv     every exported box: image, split, class, pixel corners, crop_id,
                                 emotion (the face's label in the version, null for persons)
    tables/version.json          the version's dataset_versions row (counts included)

Which boxes: the version's faces (its manifest rows: a face the version left out, flagged,
excluded by a curator or a second face of a one-face source, is not exported) with class
`face`, and every `person` detection on the version's images, class `person`. An image's split
is its faces' split (a group never straddles splits). The formats are written by FiftyOne's
own exporters (`fo.types.COCODetectionDataset`, `fo.types.YOLOv5Dataset`) over a temporary,
non-persistent dataset built from the warehouse's rows, which is deleted afterwards; nothing is
downloaded. COCO annotations carry the face's crop_id and emotion as extra attributes.

The export is built in a hidden folder and published once every format is written: built beside
`out_dir` and renamed to it in one step when there is no `out_dir` yet, else built inside it and
each format's folder renamed into place. A failed export (FiftyOne's database down, a full disk)
leaves nothing behind, so the same command can be run again; the hidden folder of a killed one is
removed by the next export to the same place.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from labeling.fiftyone.docs import relative_box
from labeling.fiftyone.sync import import_fiftyone
from warehouse.errors import ConfigError, InputError
from warehouse.schemas import SPLITS
from warehouse.store import Warehouse
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "tables")
CLASSES = ("face", "person")


@dataclass(frozen=True)
class ExportReport:
    version: str
    images: int
    boxes: dict[str, int]  # class -> boxes exported
    splits: dict[str, int]  # split -> images
    paths: dict[str, str] = field(default_factory=dict)  # format -> folder written

    def __str__(self) -> str:
        boxes = ", ".join(f"{n} {c}" for c, n in self.boxes.items())
        where = ", ".join(f"{f}: {p}" for f, p in self.paths.items())
        return f"{self.version}: {self.images} images, {boxes} boxes -> {where}"


def _boxes(wh: Warehouse, manifest: pa.Table) -> pa.Table:
    """One row per box to export (faces of the manifest, persons on its images), with the
    image's file, size and split, sorted by image then class then box."""
    with wh.connect() as con:
        con.register("m", manifest.select(["crop_id", "image_id", "split", "emotion"]))
        return con.sql(
            """
            WITH img AS (SELECT image_id, any_value(split) AS split FROM m GROUP BY image_id)
            SELECT i.image_id, i.media_path, i.width, i.height, img.split, 'face' AS label,
                   d.x1, d.y1, d.x2, d.y2, d.score, d.detector, m.crop_id, m.emotion
            FROM m JOIN crops c USING (crop_id) JOIN detections d ON d.detection_id = c.detection_id
            JOIN images i ON i.image_id = m.image_id JOIN img ON img.image_id = m.image_id
            UNION ALL
            SELECT i.image_id, i.media_path, i.width, i.height, img.split, 'person',
                   d.x1, d.y1, d.x2, d.y2, d.score, d.detector, NULL, NULL
            FROM img JOIN images i USING (image_id) JOIN detections d ON d.image_id = img.image_id
            WHERE d.label = 'person'
            ORDER BY image_id, label, x1, y1, x2, y2, detector
            """
        ).to_arrow_table()


def _check_out(out_dir: Path, formats: Sequence[str]) -> None:
    for fmt in formats:
        target = out_dir / fmt
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise InputError(f"{target} exists and is not empty: choose another --out or remove it")


STALE_AFTER_S = 24 * 3600  # a pid may be reused: a build folder untouched this long is stale regardless


def _staging_dir(out_dir: Path) -> Path:
    """A new hidden build folder on the file system the export is published to: beside `out_dir`
    when there is none yet (it is then renamed to `out_dir`), else inside it (its format folders
    are then renamed out of it)."""
    tag = f"export-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    return out_dir / f".{tag}" if out_dir.exists() else out_dir.parent / f".{out_dir.name}.{tag}"


def _writer_gone(pid: int, folder: Path) -> bool:
    try:
        if time.time() - folder.stat().st_mtime > STALE_AFTER_S:
            return True
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # removed meanwhile, or another user's process
        return False
    return False


def _remove_stale_staging(out_dir: Path) -> None:
    """Remove the build folders that killed exports to `out_dir` left (their process is gone)."""
    for folder, prefix in ((out_dir.parent, f".{out_dir.name}."), (out_dir, ".")):
        if not folder.is_dir():
            continue
        for build in folder.glob(f"{glob.escape(prefix)}export-*.tmp"):
            m = re.fullmatch(r"export-(\d+)-[0-9a-f]{8}\.tmp", build.name[len(prefix) :])
            if m and build.is_dir() and _writer_gone(int(m.group(1)), build):
                shutil.rmtree(build, ignore_errors=True)
                log.info("removed %s, left by an export that was killed", build)


def _point_yolo_yaml_at(yolo_dir: Path, final: Path) -> None:
    """FiftyOne writes the folder it exported into as dataset.yaml's `path`: the build folder's.
    Name where the export is published instead."""
    import yaml

    yaml_path = yolo_dir / "dataset.yaml"
    if not yaml_path.is_file():
        return
    d = yaml.safe_load(yaml_path.read_text()) or {}
    if "path" in d:
        d["path"] = os.path.abspath(final)
        yaml_path.write_text(yaml.safe_dump(d, default_flow_style=False))


def _publish(staging: Path, out_dir: Path, written: Sequence[str]) -> None:
    """Move the formats built in `staging` (`_staging_dir`) to `out_dir`: one rename when there is
    no `out_dir` yet, else one per format folder (each absent or empty: `_check_out`; a rename
    replaces an empty folder), those done put back if one fails. `staging` is gone afterwards."""
    if staging.parent != out_dir:
        os.rename(staging, out_dir)
        return
    moved: list[str] = []
    try:
        for fmt in written:
            os.rename(staging / fmt, out_dir / fmt)
            moved.append(fmt)
    except OSError:
        for fmt in moved:
            os.rename(out_dir / fmt, staging / fmt)
        raise
    staging.rmdir()


def _build_dataset(fo, wh: Warehouse, boxes: pa.Table):
    """A temporary FiftyOne dataset: one sample per image, its boxes in `ground_truth`."""
    ds = fo.Dataset(f"ferlab-export-{uuid.uuid4().hex[:12]}")
    ds.persistent = False
    samples: dict[str, object] = {}
    for r in boxes.to_pylist():
        s = samples.get(r["image_id"])
        if s is None:
            s = samples[r["image_id"]] = fo.Sample(
                filepath=str(wh.path(r["media_path"])),
                metadata=fo.ImageMetadata(width=r["width"], height=r["height"]),
                split=r["split"],
                image_id=r["image_id"],
                ground_truth=fo.Detections(detections=[]),
            )
        attrs = {"crop_id": r["crop_id"], "emotion": r["emotion"]} if r["label"] == "face" else {}
        s.ground_truth.detections.append(
            fo.Detection(
                label=r["label"],
                bounding_box=relative_box(r["x1"], r["y1"], r["x2"], r["y2"], r["width"], r["height"]),
                confidence=r["score"],
                **{k: v for k, v in attrs.items() if v is not None},
            )
        )
    if samples:
        ds.add_samples(list(samples.values()), progress=False)
    return ds


def _write_tables(wh: Warehouse, version: str, manifest: pa.Table, boxes: pa.Table, tables: Path) -> None:
    tables.mkdir(parents=True)
    box_table = boxes.drop_columns(["width", "height"])
    for name, table in (("manifest", manifest), ("boxes", box_table)):
        pq.write_table(table, tables / f"{name}.parquet")
        pacsv.write_csv(table, tables / f"{name}.csv")
    row = wh.sql("SELECT * FROM dataset_versions WHERE version = $v", params={"v": version}).to_pylist()[0]
    row["created_at"] = row["created_at"].isoformat()
    row["counts"] = json.loads(row["counts"])
    (tables / "version.json").write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")


def _write_detection_sets(
    wh: Warehouse,
    boxes: pa.Table,
    splits: dict[str, int],
    formats: Sequence[str],
    out_dir: Path,
    link_media: bool,
) -> None:
    """COCO and / or YOLO under `out_dir`, written by FiftyOne's exporters split by split."""
    fo = import_fiftyone()
    F = fo.ViewField
    ds = _build_dataset(fo, wh, boxes)
    media = "symlink" if link_media else True
    try:
        for split in (s for s in SPLITS if s in splits):
            view = ds.match(F("split") == split)
            if "coco" in formats:
                view.export(
                    dataset_type=fo.types.COCODetectionDataset,
                    data_path=str(out_dir / "coco" / "data"),
                    labels_path=str(out_dir / "coco" / f"{split}.json"),
                    label_field="ground_truth",
                    classes=list(CLASSES),
                    export_media=media,
                    progress=False,
                )
            if "yolo" in formats:
                view.export(
                    export_dir=str(out_dir / "yolo"),
                    dataset_type=fo.types.YOLOv5Dataset,
                    label_field="ground_truth",
                    classes=list(CLASSES),
                    split=split,
                    export_media=media,
                    progress=False,
                )
    finally:
        ds.delete()


def export_version(
    wh: Warehouse,
    version: str,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    link_media: bool = False,
) -> ExportReport:
    """Write the dataset version `version` under `out_dir` in `formats` (module docstring).

    `link_media` symlinks the images instead of copying them (quicker; the export then needs
    the data root). Raises UnknownDatasetVersion for a version that is not stored,
    ConfigError for an unknown format and InputError when a format's folder exists and is
    not empty (nothing is overwritten). Whatever fails, nothing is left under `out_dir`
    (module docstring)."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown export formats {unknown}; choose from {list(FORMATS)}")
    manifest = read_manifest(wh, version)
    out_dir = Path(out_dir)
    _check_out(out_dir, formats)
    boxes = _boxes(wh, manifest)
    image_split = dict(zip(boxes.column("image_id").to_pylist(), boxes.column("split").to_pylist()))
    splits = {s: n for s in SPLITS if (n := sum(v == s for v in image_split.values()))}
    labels = boxes.column("label").to_pylist()
    counts = {c: labels.count(c) for c in CLASSES}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = _staging_dir(out_dir)
    staging.mkdir()
    try:
        if "tables" in formats:
            _write_tables(wh, version, manifest, boxes, staging / "tables")
        detection_formats = [f for f in formats if f in ("coco", "yolo")]
        if detection_formats:
            _write_detection_sets(wh, boxes, splits, detection_formats, staging, link_media)
        if (staging / "yolo").exists():
            _point_yolo_yaml_at(staging / "yolo", out_dir / "yolo")
        written = [f for f in formats if (staging / f).exists()]
        _publish(staging, out_dir, written)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # no half-written export is left behind
        raise
    paths = {f: str(out_dir / f) for f in written}
    return ExportReport(version=version, images=len(image_split), boxes=counts, splits=splits, paths=paths)
