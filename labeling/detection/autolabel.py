"""Auto-labeling of ingested images: detect faces (and persons), crop the faces, store both.

Frames come from the warehouse's `images` table (their media files), so detections and crops
join images by image_id. FER-2013 images are face crops already: they bypass detection with
one full-image face box (detector "source:fer2013"), so every face of every source ends up in
the same `crops` table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa

from labeling.detection.crops import CROP_SIZE, GRAY_SIZE, FaceCrop, crop_faces
from labeling.detection.detect import DetectionRows, detect_frames, detection_id
from labeling.detection.detectors import Detection, Detector
from labeling.detection.landmarks import EyeLocator
from labeling.detection.media import Frame
from labeling.detection.settings import AutoLabelSettings
from warehouse.hashing import stable_id
from warehouse.rejects import Reject
from warehouse.schemas import CROPS
from warehouse.store import Warehouse

FULL_IMAGE_DETECTOR = "source:{source}"  # the "detector" of images that are face crops already
CROPPED_SOURCES = ("fer2013",)


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
    frames: int = 0
    frames_without_face: int = 0
    detections: int = 0
    crops: int = 0
    added: dict[str, int] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    flagged: dict[str, int] = field(default_factory=dict)  # too_small, too_blurry

    def summary(self) -> str:
        flags = ", ".join(f"{k} {v}" for k, v in self.flagged.items() if v) or "none flagged"
        return (
            f"{self.frames} images, {self.frames_without_face} without a face; {self.detections} detections, "
            f"{self.crops} face crops ({flags}); added {self.added}; {len(self.rejects)} rejects"
        )


def _frames(wh: Warehouse, images: pa.Table) -> Iterator[Frame | Reject]:
    for row in images.select(["image_id", "source_uri", "frame_index", "media_path"]).to_pylist():
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
    frame_index, media_path); `settings.batch_size` frames per detector call. Re-running adds
    nothing: ids hash their inputs. StorageError when the warehouse cannot be written."""
    settings = settings or AutoLabelSettings()
    batch_size, margin = settings.batch_size, settings.margin
    report = AutolabelReport()
    writer = _CropWriter(wh)
    cropped = np.isin(images.column("source").to_numpy(zero_copy_only=False), CROPPED_SOURCES)
    full_rows, det_table = _full_image_faces(wh, images.filter(pa.array(cropped)), writer, report)

    def on_frame(frame: Frame, found: list[Detection]) -> None:
        crops, rejects = crop_faces(
            frame.image,
            found,
            margin=margin,
            eyes=eyes,
            source_uri=frame.source_uri,
            frame_index=frame.frame_index,
        )
        report.rejects.extend(rejects)
        for crop in crops:
            det_id = detection_id(frame.image_id, found[crop.index], detector.name, detector.weights_sha256)
            writer.add(frame.image_id, det_id, crop, margin, align=True)

    table, frames, empty, rejects = detect_frames(
        detector, _frames(wh, images.filter(pa.array(~cropped))), batch_size, on_frame, show_progress
    )
    report.rejects.extend(rejects)
    report.frames = frames + full_rows
    report.frames_without_face = empty
    detections = pa.concat_tables([det_table, table])
    crops = writer.table()
    report.detections, report.crops = detections.num_rows, crops.num_rows
    report.flagged = {
        k: int(np.sum(crops.column(k).to_numpy(zero_copy_only=False))) for k in ("too_small", "too_blurry")
    }
    # Detections before crops: a crash in between leaves crops to redo, never crops without boxes.
    report.added["detections"] = wh.append("detections", detections)
    report.added["crops"] = wh.append("crops", crops)
    report.added["rejects"] = wh.add_rejects(report.rejects)
    return report


def _full_image_faces(
    wh: Warehouse, images: pa.Table, writer: _CropWriter, report: AutolabelReport
) -> tuple[int, pa.Table]:
    """Images that are face crops already: one full-image face detection each, then the crop."""
    rows = DetectionRows("", "")  # each face names its own detector (source:<name>)
    source_of = dict(
        zip(images.column("image_id").to_pylist(), images.column("source").to_pylist(), strict=True)
    )
    n = 0
    for item in _frames(wh, images):
        if isinstance(item, Reject):
            report.rejects.append(item)
            continue
        n += 1
        h, w = item.image.shape[:2]
        name = FULL_IMAGE_DETECTOR.format(source=source_of[item.image_id])
        face = Detection("face", 0.0, 0.0, float(w), float(h), 1.0, detector=name, weights_sha256="")
        rows.add(item, [face])
        crops, _ = crop_faces(item.image, [face], margin=0.0, align=False)
        writer.add(
            item.image_id, detection_id(item.image_id, face, name, ""), crops[0], margin=0.0, align=False
        )
    return n, rows.table()
