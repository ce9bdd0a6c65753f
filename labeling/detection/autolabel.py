"""Auto-labeling of ingested images: detect faces (and persons), crop the faces, store both.

Frames come from the warehouse's `images` table (their media files), so detections and crops
join images by image_id. FER-2013 images are face crops already: they bypass detection with
one full-image face box (detector "source:fer2013"), so every face of every source ends up in
the same `crops` table.

A run streams: every `commit_every` images its rows are stored (detections, rejects, crops, then
one `autolabel_done` row per finished image), so it holds one chunk in memory and a killed run
loses one chunk at most. Images the same detector (name and weights) has finished at the same
margin are left out before decoding: running again does nothing, a resumed run only the rest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeling.detection.crops import CROP_SIZE, GRAY_SIZE, FaceCrop, crop_faces
from labeling.detection.detect import DetectionRows, detection_id, iter_detections
from labeling.detection.detectors import Detection, Detector
from labeling.detection.landmarks import EyeLocator
from labeling.detection.media import Frame
from labeling.detection.settings import AutoLabelSettings
from warehouse.hashing import stable_id
from warehouse.rejects import Reject
from warehouse.schemas import AUTOLABEL_DONE, CROPS, DETECTIONS
from warehouse.sources.common import progress
from warehouse.store import Warehouse

logger = logging.getLogger(__name__)

FULL_IMAGE_DETECTOR = "source:{source}"  # the "detector" of images that are face crops already
CROPPED_SOURCES = ("fer2013",)
ADDED = ("detections", "rejects", "crops", "autolabel_done")  # the tables a chunk writes, in order


IMAGE_COLUMNS = ("image_id", "source", "source_uri", "frame_index", "media_path")
# the images columns a selection may filter on (a partition: a DISFA subject, a scraped batch)
SELECTABLE = ("source", "subject", "batch")


def select_images(wh: Warehouse, **equals: str | None) -> pa.Table:
    """The images to auto-label, in decoding order (each video's frames in sequence): all of them,
    or those whose columns equal the given values (`source="disfa", subject="SN001"`; None: any).
    Values travel as query parameters."""
    unknown = set(equals) - set(SELECTABLE)
    if unknown:
        raise ValueError(
            f"select_images filters on {', '.join(SELECTABLE)}, not {', '.join(sorted(unknown))}"
        )
    given = {column: value for column, value in equals.items() if value is not None}
    where = " AND ".join(f"{column} = ?" for column in given)
    return wh.sql(
        f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images {'WHERE ' + where if where else ''} "
        "ORDER BY source_uri, frame_index",
        list(given.values()),
    )


@dataclass
class AutolabelReport:
    """What one run did, summed over its chunks (`frames`, `detections`, `crops`: this run's
    work; `added`: the rows that were new to each table)."""

    frames: int = 0
    frames_without_face: int = 0
    detections: int = 0
    crops: int = 0
    skipped: int = 0  # images already labeled by this detector at this margin: not decoded
    chunks: int = 0  # commits
    added: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ADDED, 0))
    rejects: list[Reject] = field(default_factory=list)
    flagged: dict[str, int] = field(default_factory=lambda: {"too_small": 0, "too_blurry": 0})

    def summary(self) -> str:
        flags = ", ".join(f"{k} {v}" for k, v in self.flagged.items() if v) or "none flagged"
        return (
            f"{self.frames} images, {self.frames_without_face} without a face; {self.detections} detections, "
            f"{self.crops} face crops ({flags}); {self.skipped} images skipped, already labeled; "
            f"added {self.added}; {len(self.rejects)} rejects"
        )


def _frames(wh: Warehouse, images: pa.Table) -> Iterator[Frame | Reject]:
    rows = images.select(["image_id", "source_uri", "frame_index", "media_path"])
    for row in (r for batch in rows.to_batches(max_chunksize=1024) for r in batch.to_pylist()):
        image = cv2.imread(str(wh.path(row["media_path"])), cv2.IMREAD_COLOR)
        if image is None:
            yield Reject(
                "labeling",
                row["source_uri"],
                "decode",
                "unreadable_media",
                row["media_path"],
                row["frame_index"],
            )
        else:
            yield Frame(row["source_uri"], row["frame_index"], row["image_id"], image)


class _CropWriter:
    """Stores each face crop (224 RGB as JPEG, 48 gray as PNG) and collects its crops row."""

    def __init__(self, wh: Warehouse):
        self.wh = wh
        self.cols: dict[str, list] = {f.name: [] for f in CROPS}

    def add(self, image_id: str, det_id: str, crop: FaceCrop, margin: float, align: bool) -> None:
        ok_rgb, jpg = cv2.imencode(
            ".jpg", cv2.cvtColor(crop.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        ok_gray, png = cv2.imencode(".png", crop.gray)
        if not (ok_rgb and ok_gray):
            raise ValueError(f"could not encode the crop of detection {det_id}")
        c = self.cols
        c["crop_id"].append(stable_id(det_id, margin, CROP_SIZE, GRAY_SIZE, align))
        c["image_id"].append(image_id)
        c["detection_id"].append(det_id)
        c["media_path"].append(self.wh.put_media(jpg.tobytes(), "jpg"))
        c["gray_media_path"].append(self.wh.put_media(png.tobytes(), "png"))
        c["size"].append(crop.rgb.shape[0])
        c["gray_size"].append(crop.gray.shape[0])
        c["margin"].append(margin)
        c["angle"].append(crop.angle)
        for key in ("face_px", "blur", "brightness", "too_small", "too_blurry"):
            c[key].append(crop.quality[key])

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=CROPS)


@dataclass(frozen=True)
class _Labeler:
    """Who labels a set of images and how: the detector their rows (and autolabel_done) record,
    and how their faces are cropped."""

    detector: str
    weights_sha256: str
    margin: float
    align: bool


class _Chunk:
    """The rows of the images handled since the last commit."""

    def __init__(self, wh: Warehouse):
        self.wh = wh
        self.clear()

    def clear(self) -> None:
        self.images = 0
        self.rows: dict[_Labeler, DetectionRows] = {}
        self.crops = _CropWriter(self.wh)
        self.rejects: list[Reject] = []
        self.done: dict[str, list] = {f.name: [] for f in AUTOLABEL_DONE}

    def reject(self, reject: Reject) -> None:
        self.images += 1
        self.rejects.append(reject)

    def add(self, frame: Frame, found: list[Detection], labeler: _Labeler, eyes: EyeLocator | None) -> None:
        self.images += 1
        rows = self.rows.get(labeler)
        if rows is None:
            rows = self.rows[labeler] = DetectionRows(labeler.detector, labeler.weights_sha256)
        rows.add(frame, found)
        crops, rejects = crop_faces(
            frame.image,
            found,
            margin=labeler.margin,
            align=labeler.align,
            eyes=eyes,
            source_uri=frame.source_uri,
            frame_index=frame.frame_index,
        )
        self.rejects.extend(rejects)
        for crop in crops:
            det_id = detection_id(frame.image_id, found[crop.index], labeler.detector, labeler.weights_sha256)
            self.crops.add(frame.image_id, det_id, crop, labeler.margin, align=labeler.align)
        for key, value in (
            ("image_id", frame.image_id),
            ("detector", labeler.detector),
            ("weights_sha256", labeler.weights_sha256),
            ("margin", labeler.margin),
            ("detections", len(found)),
        ):
            self.done[key].append(value)

    def commit(self, report: AutolabelReport) -> None:
        """Store the chunk's rows and count them into `report`. Detections before crops, as a
        crash in between leaves crops to redo, never crops without boxes; the done rows last,
        so an image is skipped only once all its rows are stored."""
        if not self.images:
            return
        tables = [rows.table() for rows in self.rows.values()]
        detections = pa.concat_tables(tables) if tables else DETECTIONS.empty_table()
        crops = self.crops.table()
        added = report.added
        added["detections"] += self.wh.append("detections", detections)
        added["rejects"] += self.wh.add_rejects(self.rejects)
        added["crops"] += self.wh.append("crops", crops)
        added["autolabel_done"] += self.wh.append(
            "autolabel_done", pa.table(self.done, schema=AUTOLABEL_DONE)
        )
        report.detections += detections.num_rows
        report.crops += crops.num_rows
        report.rejects.extend(self.rejects)
        for k in report.flagged:
            report.flagged[k] += int(np.sum(crops.column(k).to_numpy(zero_copy_only=False)))
        report.chunks += 1
        logger.debug(
            "chunk %d stored: %d images, %d detections, %d crops",
            report.chunks,
            self.images,
            detections.num_rows,
            crops.num_rows,
        )
        self.clear()


# The selected images a labeler has finished: its autolabel_done rows, or (rows written before that
# table, or a run killed before its done rows) detections by its very name and weights whose face
# boxes all have a crop at its margin. A merged detector (the teachers) names each teacher in its
# detections, never itself, so only its done rows count: a lone teacher's run found fewer boxes.
_DONE_SQL = """
WITH done AS (
    SELECT DISTINCT image_id FROM autolabel_done
    WHERE image_id IN (SELECT image_id FROM selected) AND detector = $detector
      AND weights_sha256 = $sha AND margin = CAST($margin AS FLOAT)),
boxes AS (
    SELECT image_id, detection_id, label FROM detections
    WHERE image_id IN (SELECT image_id FROM selected) AND image_id NOT IN (SELECT image_id FROM done)
      AND detector = $detector AND weights_sha256 = $sha),
cropped AS (
    SELECT DISTINCT detection_id FROM crops
    WHERE image_id IN (SELECT image_id FROM boxes) AND margin = CAST($margin AS FLOAT))
SELECT image_id, NULL::INT AS detections FROM done
UNION ALL
SELECT b.image_id, count(*)::INT AS detections FROM boxes b LEFT JOIN cropped c USING (detection_id)
GROUP BY b.image_id HAVING count(*) FILTER (WHERE b.label = 'face' AND c.detection_id IS NULL) = 0
"""


def _pending(wh: Warehouse, images: pa.Table, labeler: _Labeler, report: AutolabelReport) -> pa.Table:
    """The images `labeler` has not finished, in their order; those it has count as skipped."""
    if not images.num_rows:
        return images
    params = {"detector": labeler.detector, "sha": labeler.weights_sha256, "margin": labeler.margin}
    with wh.connect() as con:
        con.register("selected", images.select(["image_id"]))
        done = con.sql(_DONE_SQL, params=params).to_arrow_table()
    earlier = done.filter(pc.is_valid(done.column("detections")))
    if earlier.num_rows:
        # Marked now, so the next run finds them by their done rows.
        marks = {
            "image_id": earlier.column("image_id"),
            "detector": [labeler.detector] * earlier.num_rows,
            "weights_sha256": [labeler.weights_sha256] * earlier.num_rows,
            "margin": [labeler.margin] * earlier.num_rows,
            "detections": earlier.column("detections"),
        }
        report.added["autolabel_done"] += wh.append("autolabel_done", pa.table(marks, schema=AUTOLABEL_DONE))
    finished = pc.is_in(images.column("image_id"), value_set=done.column("image_id"))
    skipped = int(pc.sum(finished).as_py() or 0)
    if skipped:
        report.skipped += skipped
        logger.info(
            "%d of %d images already labeled by %s (margin %s): skipped",
            skipped,
            images.num_rows,
            labeler.detector,
            labeler.margin,
        )
    return images.filter(pc.invert(finished))


def autolabel(
    wh: Warehouse,
    images: pa.Table,
    detector: Detector,
    settings: AutoLabelSettings | None = None,
    eyes: EyeLocator | None = None,
    show_progress: bool = False,
) -> AutolabelReport:
    """Detect with `detector` (the one `settings.spec` named, loaded by the caller), crop with
    `settings.margin` and store, for these `images` rows (image_id, source, source_uri,
    frame_index, media_path); `settings.batch_size` frames per detector call, the rows stored
    every `settings.commit_every` images. Images this detector (name and weights) has finished
    at this margin are skipped unread; ids hash their inputs, so redoing an image adds nothing.
    StorageError when the warehouse cannot be written."""
    settings = settings or AutoLabelSettings()
    report = AutolabelReport()
    sources = images.column("source").to_numpy(zero_copy_only=False)
    full_image = []
    for source in CROPPED_SOURCES:
        labeler = _Labeler(FULL_IMAGE_DETECTOR.format(source=source), "", 0.0, align=False)
        full_image.append(
            (labeler, _pending(wh, images.filter(pa.array(sources == source)), labeler, report))
        )
    labeler = _Labeler(detector.name, detector.weights_sha256, settings.margin, align=True)
    detected = _pending(wh, images.filter(pa.array(~np.isin(sources, CROPPED_SOURCES))), labeler, report)

    chunk = _Chunk(wh)
    total = detected.num_rows + sum(pending.num_rows for _, pending in full_image)
    bar = progress(total=total, desc=f"autolabel {detector.name}", unit="image", enabled=show_progress)

    def one_done() -> None:
        bar.update(1)
        if chunk.images >= settings.commit_every:
            chunk.commit(report)

    try:
        for full, pending in full_image:
            for item in _frames(wh, pending):
                if isinstance(item, Reject):
                    chunk.reject(item)
                else:
                    chunk.add(item, [_full_image_face(item, full.detector)], full, eyes=None)
                    report.frames += 1
                one_done()
        stream = iter_detections(detector, _frames(wh, detected), settings.batch_size)
        with contextlib.closing(stream):  # leaving early (an error) stops the decoder thread
            for item in stream:
                if isinstance(item, Reject):
                    chunk.reject(item)
                else:
                    frame, found = item
                    chunk.add(frame, found, labeler, eyes)
                    report.frames += 1
                    report.frames_without_face += not found
                one_done()
        chunk.commit(report)
    finally:
        bar.close()
    return report


def _full_image_face(frame: Frame, name: str) -> Detection:
    """The one face of an image that is a face crop already: all of it."""
    h, w = frame.image.shape[:2]
    return Detection("face", 0.0, 0.0, float(w), float(h), 1.0, detector=name, weights_sha256="")
