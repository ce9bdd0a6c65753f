"""Run a detector over image files and videos: one `detections` row per box.

Decoding runs in a background thread that feeds a bounded queue, so the detector (the
expensive part) never waits for the disk or the codec; frames go to it in batches. Bad
input (empty file, not an image, a video OpenCV cannot open, a cut-off video) becomes a
Reject and the run goes on.

    table, frames, empty, rejects = detect_files(load_detector("yunet"), ["clips/", "a.jpg"])
"""

from __future__ import annotations

import io
import queue
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from labeling.detectors import Detection, Detector
from warehouse.atomic import atomic_path
from warehouse.errors import ConfigError, InputError, StorageError
from warehouse.hashing import sha256_bytes, sha256_file, stable_id
from warehouse.rejects import Reject
from warehouse.schemas import DETECTIONS
from warehouse.sources.common import progress

SOURCE = "labeling"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

T = TypeVar("T")


@dataclass(slots=True)
class Frame:
    """One decoded image or video frame, BGR."""

    source_uri: str
    frame_index: int | None  # 1-based in a video; None for an image file
    image_id: str  # as in the images table
    image: np.ndarray


# ---- finding and decoding media --------------------------------------------------------------
def media_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files given, plus the images and videos found under folders given (sorted, no hidden)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            out.extend(sorted(found))
        else:
            out.append(p)
    return out


def _truncated_image(data: bytes) -> bool:
    """A JPEG or PNG cut short: OpenCV decodes the part that is there and fills the rest
    with gray, silently. A JPEG's end marker must follow its last scan (markers cannot occur
    inside scan data; data a camera appends after the end marker is fine); a PNG's IEND
    chunk must follow its last IDAT chunk."""
    if data[:3] == b"\xff\xd8\xff":
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data.rfind(b"IEND") < data.rfind(b"IDAT")
    return False


def _reject(uri: str, reason: str, detail: str, line: int | None = None) -> Reject:
    return Reject(SOURCE, uri, "decode", reason, detail, line)


def _decode_image(path: Path, uri: str) -> Frame | Reject:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _reject(uri, "unreadable_file", str(exc))
    if not data:
        return _reject(uri, "empty_file", "0 bytes")
    if _truncated_image(data):
        return _reject(uri, "truncated_image", f"{len(data)} bytes, the image's end marker is missing")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return _reject(uri, "not_an_image", f"OpenCV cannot decode it (starts {data[:8]!r})")
    return Frame(uri, None, sha256_bytes(data), image)


def _decode_video(path: Path, uri: str, stride: int) -> Iterator[Frame | Reject]:
    """Every `stride`-th frame (1, 1 + stride, ...). A frame is passed on only once the next
    grab succeeds: a file cut through its last frame would otherwise give a half-gray one."""
    try:
        size = path.stat().st_size
        digest = sha256_file(path) if size else ""
    except OSError as exc:
        yield _reject(uri, "unreadable_file", str(exc))
        return
    if size == 0:
        yield _reject(uri, "empty_file", "0 bytes")
        return
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            yield _reject(uri, "unreadable_video", f"OpenCV cannot open it ({size} bytes)")
            return
        declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        held: Frame | None = None
        n = 0
        while cap.grab():
            n += 1
            if held is not None:
                yield held
                held = None
            if (n - 1) % stride:
                continue
            ok, image = cap.retrieve()
            if not ok or image is None:
                yield _reject(uri, "unreadable_frame", f"frame {n} could not be decoded", n)
                continue
            held = Frame(uri, n, stable_id(digest, n), image)
        if n == 0:
            yield _reject(uri, "unreadable_video", f"OpenCV opened it but decoded no frame ({size} bytes)")
        elif n < declared:
            detail = f"decoded {n} of the {declared} frames the container declares"
            if held is not None:
                detail += f"; frame {held.frame_index} skipped: the cut may run through it"
                held = None
            yield _reject(uri, "truncated_video", detail, n + 1)
        if held is not None:
            yield held
    finally:
        cap.release()


def iter_frames(paths: Iterable[str | Path], stride: int = 1) -> Iterator[Frame | Reject]:
    """Decoded frames of every image and video (in order), and a Reject for each bad one."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, not {stride}")
    for path in media_files(paths):
        uri = str(path.resolve())
        ext = path.suffix.lower()
        if not path.exists():
            yield _reject(uri, "missing_file", "no such file")
        elif ext in VIDEO_EXTS:
            yield from _decode_video(path, uri, stride)
        elif ext in IMAGE_EXTS:
            yield _decode_image(path, uri)
        else:
            # Unknown extension: try it as an image, then as a video, before giving up.
            first = _decode_image(path, uri)
            if isinstance(first, Frame):
                yield first
                continue
            video = list(_decode_video(path, uri, stride))
            if any(isinstance(v, Frame) for v in video):
                yield from video
            else:
                yield _reject(uri, "unsupported_file", f"neither an image nor a video OpenCV reads ({ext})")


# ---- background decoding ---------------------------------------------------------------------
class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def prefetch(items: Iterator[T], depth: int = 32) -> Iterator[T]:
    """Run `items` in a background thread, `depth` items ahead. OpenCV's decoders release the
    GIL, so decoding overlaps the detector. An error in the thread is raised here; leaving
    the loop early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (VideoCapture.release) runs in its own thread
            put(_DONE)

    thread = threading.Thread(target=work, name="detect-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


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


def detect_frames(
    detector: Detector,
    items: Iterator[Frame | Reject],
    batch_size: int = 16,
    on_frame: FrameCallback | None = None,
    show_progress: bool = False,
) -> tuple[pa.Table, int, int, list[Reject]]:
    """Detect on decoded frames, fed to the detector in batches while the next are decoded.

    Returns (detections table, frames run through the detector, frames with no detection,
    rejects passed through). `on_frame(frame, detections)` is called for every frame, in
    order, for work that needs the pixels (cropping) without decoding twice."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    rows = DetectionRows(detector.name, detector.weights_sha256)
    rejects: list[Reject] = []
    frames_total = frames_empty = 0
    batch: list[Frame] = []
    bar = progress(desc=f"detect {detector.name}", unit="frame", enabled=show_progress)

    def flush() -> None:
        nonlocal frames_total, frames_empty
        results = detector.detect([f.image for f in batch])
        for frame, found in zip(batch, results, strict=True):
            rows.add(frame, found)
            frames_empty += not found
            if on_frame is not None:
                on_frame(frame, found)
        frames_total += len(batch)
        bar.update(len(batch))
        batch.clear()

    try:
        # One batch decoded ahead keeps the detector fed; more only holds frames in memory.
        for item in prefetch(items, depth=batch_size):
            if isinstance(item, Reject):
                rejects.append(item)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
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


# ---- command line -----------------------------------------------------------------------------
def write_parquet(table: pa.Table, out: str | Path) -> Path:
    """Write `table` atomically: readers see the old file or the whole new one."""
    out = Path(out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out


def check_out_file(out: str | Path) -> Path:
    """The Parquet file `--out` names, checked before anything is detected: not a folder, and
    in an existing folder that takes a new file (a missing folder is not created: a typo in
    it should not make a new tree). InputError otherwise."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: give a file name, e.g. {out / 'detections.parquet'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"--out {out}: {folder} {what}; create the folder or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(
            f"--out {out}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    return out


def _listed(paths: Sequence[str | Path], most: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def run_detect_cli(
    paths: Sequence[str | Path],
    detector_spec: str = "teachers",
    out_parquet: str | Path | None = None,
    stride: int = 1,
    batch_size: int = 16,
    device: str = "auto",
) -> int:
    """`ferlab detect`: detections to a Parquet file (or as CSV on stdout, with the summary
    then on stderr so the CSV stays clean). Returns exit code 0.

    What would stop the run is found before the detector loads (minutes for the teachers on
    a large input, then lost): bad numbers, an unusable device or `--out`, nothing to detect.
    Those, a detector that cannot load and a Parquet file that cannot be written raise a
    FerlabError (ConfigError, InputError, UnsafeFileError, StorageError), one line for the CLI
    to print. A bad image or video is a reject, and the run goes on."""
    from labeling.detectors import load_detector, resolve_device

    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, not {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, not {batch_size}")
    resolve_device(device)
    if out_parquet:
        out_parquet = check_out_file(out_parquet)
    files = media_files(paths)
    if not any(f.exists() for f in files):
        raise InputError(
            f"no image or video in {_listed(list(paths))}: looked for "
            f"{' '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))} (hidden files and folders skipped)"
        )
    detector = load_detector(detector_spec, device=device)
    table, frames, empty, rejects = detect_files(
        detector, files, stride=stride, batch_size=batch_size, show_progress=True
    )
    report = sys.stdout
    if out_parquet:
        try:
            write_parquet(table, out_parquet)
        except OSError as exc:
            raise StorageError(
                f"{out_parquet}: cannot write the {table.num_rows} detections ({exc.strerror or exc}); "
                "free some space or choose another --out"
            ) from exc
        print(f"{table.num_rows} detections by {detector.name} -> {out_parquet}")
    else:
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
        report = sys.stderr
    print(f"frames: {frames}, frames with no detection: {empty}", file=report)
    for reason, n in sorted(Counter(r.reason for r in rejects).items()):
        print(f"  rejected {n:>6}  {reason}", file=report)
    return 0
