"""Run a detector over image files and videos: one `detections` row per box.

Decoding (labeling.detection.media, warehouse.video) runs in a background thread (labeling.detection.prefetch)
that feeds a bounded queue, so the detector (the
expensive part) never waits for the disk or the codec; frames go to it in batches. Bad
input (empty file, not an image, a video OpenCV cannot open, a cut-off video) becomes a
Reject and the run goes on.

    table, frames, empty, rejects = detect_files(load_detector("yunet"), ["clips/", "a.jpg"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from labeling.detection.detectors import Detection, Detector
from labeling.detection.media import Frame, iter_frames
from labeling.detection.prefetch import prefetch
from warehouse.atomic import atomic_path
from warehouse.hashing import stable_id
from warehouse.rejects import Reject
from warehouse.schemas import DETECTIONS
from warehouse.sources.common import progress


# ---- detection rows ---------------------------------------------------------------------------
def _rounded_box(d: Detection) -> tuple[float, float, float, float]:
    return (round(d.x1, 2), round(d.y1, 2), round(d.x2, 2), round(d.y2, 2))


def detection_id(image_id: str, d: Detection, detector_name: str, weights_sha256: str) -> str:
    """Image, detector (the detection's own, for merged teachers), weights and box: the same
    detector on the same input gives the same id."""
    name, sha = d.detector or detector_name, d.weights_sha256 or weights_sha256
    return stable_id(image_id, name, sha, d.label, *_rounded_box(d))


class DetectionRows:
    """Column lists for the detections table (one append per box, one Table at the end).
    A Detection's own detector name and weights hash win over the ones given here."""

    def __init__(self, name: str, weights_sha256: str):
        self.name, self.sha = name, weights_sha256
        self.cols: dict[str, list] = {f.name: [] for f in DETECTIONS}

    def add(self, frame: Frame, detections: Sequence[Detection]) -> None:
        h, w = frame.image.shape[:2]
        c = self.cols
        for d in detections:
            name, sha = d.detector or self.name, d.weights_sha256 or self.sha
            box = _rounded_box(d)
            c["detection_id"].append(detection_id(frame.image_id, d, self.name, self.sha))
            c["image_id"].append(frame.image_id)
            c["source_uri"].append(frame.source_uri)
            c["frame_index"].append(frame.frame_index)
            c["width"].append(w)
            c["height"].append(h)
            c["label"].append(d.label)
            for key, value in zip(("x1", "y1", "x2", "y2"), box):
                c[key].append(value)
            c["score"].append(d.score)
            c["detector"].append(name)
            c["weights_sha256"].append(sha)

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=DETECTIONS)


FrameCallback = Callable[[Frame, list[Detection]], None]
Detected = tuple[Frame, list[Detection]]


def iter_detections(
    detector: Detector, items: Iterator[Frame | Reject], batch_size: int = 16
) -> Iterator[Detected | Reject]:
    """Detect on decoded frames, fed to the detector in batches while the next are decoded;
    yield each frame with its detections, in order, and each Reject as it comes. Holds one batch
    and the one decoded ahead, so a caller that stores as it goes needs no more memory for a
    long run. Close it (contextlib.closing) when leaving early: that stops the decoder thread."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    return _iter_detections(detector, items, batch_size)


def _iter_detections(
    detector: Detector, items: Iterator[Frame | Reject], batch_size: int
) -> Iterator[Detected | Reject]:
    batch: list[Frame] = []
    # One batch decoded ahead keeps the detector fed; more only holds frames in memory.
    with contextlib.closing(prefetch(items, depth=batch_size)) as decoded:
        for item in decoded:
            if isinstance(item, Reject):
                yield item
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                yield from zip(batch, detector.detect([f.image for f in batch]), strict=True)
                batch = []
        if batch:
            yield from zip(batch, detector.detect([f.image for f in batch]), strict=True)


def detect_frames(
    detector: Detector,
    items: Iterator[Frame | Reject],
    batch_size: int = 16,
    on_frame: FrameCallback | None = None,
    show_progress: bool = False,
) -> tuple[pa.Table, int, int, list[Reject]]:
    """Detect on decoded frames (iter_detections) into one table.

    Returns (detections table, frames run through the detector, frames with no detection,
    rejects passed through). `on_frame(frame, detections)` is called for every frame, in
    order, for work that needs the pixels (cropping) without decoding twice."""
    stream = iter_detections(detector, items, batch_size)
    rows = DetectionRows(detector.name, detector.weights_sha256)
    rejects: list[Reject] = []
    frames_total = frames_empty = 0
    bar = progress(desc=f"detect {detector.name}", unit="frame", enabled=show_progress)
    try:
        with contextlib.closing(stream):
            for item in stream:
                if isinstance(item, Reject):
                    rejects.append(item)
                    continue
                frame, found = item
                rows.add(frame, found)
                frames_total += 1
                frames_empty += not found
                if on_frame is not None:
                    on_frame(frame, found)
                bar.update(1)
    finally:
        bar.close()
    return rows.table(), frames_total, frames_empty, rejects


def detect_files(
    detector: Detector,
    paths: Iterable[str | Path],
    stride: int = 1,
    batch_size: int = 16,
    on_frame: FrameCallback | None = None,
    show_progress: bool = False,
) -> tuple[pa.Table, int, int, list[Reject]]:
    """Detect on every image and every `stride`-th video frame under `paths` (see detect_frames)."""
    return detect_frames(detector, iter_frames(paths, stride), batch_size, on_frame, show_progress)


def write_parquet(table: pa.Table, out: str | Path) -> Path:
    """Write `table` atomically: readers see the old file or the whole new one."""
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out
