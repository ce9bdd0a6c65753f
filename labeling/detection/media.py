"""Finding images and videos and decoding them into frames; bad input becomes a Reject.

for item in iter_frames(["clips/", "a.jpg"], stride=3): ...   # Frame | Reject, in order
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from warehouse.hashing import sha256_bytes, sha256_file, stable_id
from warehouse.rejects import Reject
from warehouse.video import VideoDecode, avi_cut, decode_frames, first_lost, truncation_detail

SOURCE = "labeling"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass(slots=True)
class Frame:
    """One decoded image or video frame, BGR."""

    source_uri: str
    frame_index: int | None  # 1-based in a video; None for an image file
    image_id: str  # as in the images table
    image: np.ndarray


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
    """Every `stride`-th frame (1, 1 + stride, ...), read by warehouse.video (a frame is passed
    on only once the next grab succeeds: a file cut through its last frame would otherwise
    give a half-gray one); a Reject when the video is unreadable or short."""
    try:
        size = path.stat().st_size
        digest = sha256_file(path) if size else ""
        is_avi, cut = avi_cut(path) if size else (False, None)
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
        state = VideoDecode(header_frames=declared, is_avi=is_avi, avi_cut=cut)
        for n, image in decode_frames(cap, state, stride):
            yield Frame(uri, n, stable_id(digest, n), image)
        if state.decoded == 0:
            yield _reject(uri, "unreadable_video", f"OpenCV opened it but decoded no frame ({size} bytes)")
        elif state.short:
            yield _reject(uri, "truncated_video", truncation_detail(state), first_lost(state))
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
