"""Reading video frames so that a cut file never passes a half-decoded frame on: the one
reader for DISFA ingestion (warehouse.sources.disfa) and detection (labeling.detection.detect).

OpenCV decodes a truncated video without complaint and hands back a half-grey last frame. So
each kept frame is held back until the next grab succeeds, an AVI's RIFF chunks are checked
against the file's size, and what was lost is recorded in a VideoDecode for the caller's reject.

    state = VideoDecode(header_frames=..., is_avi=is_avi, avi_cut=cut)   # is_avi, cut = avi_cut(path)
    for n, image in decode_frames(cv2.VideoCapture(str(path)), state, stride=8): ...
    if state.short: reject(truncation_detail(state), first_lost(state))
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FFMPEG_LOGLEVEL = "OPENCV_FFMPEG_LOGLEVEL"
AV_LOG_QUIET = "-8"


def quiet_ffmpeg() -> None:
    """Keep FFmpeg's own log lines (e.g. "moov atom not found" for a cut MP4, written by the native
    library on stderr) off the terminal: the caller reports a damaged video itself, in one line.
    OpenCV reads OPENCV_FFMPEG_LOGLEVEL once per process, when it first opens a file with FFmpeg,
    so this must run before that; a level already set (to debug a video) is kept."""
    os.environ.setdefault(FFMPEG_LOGLEVEL, AV_LOG_QUIET)


def open_video(path: str | Path) -> cv2.VideoCapture:
    """`cv2.VideoCapture(path)` with FFmpeg quiet (`quiet_ffmpeg`); check `isOpened()`."""
    quiet_ffmpeg()
    return cv2.VideoCapture(str(path))


def _grab(cap: cv2.VideoCapture) -> bool:
    """The next frame grabbed; False where the stream ends or the decoder raises on a damaged one."""
    try:
        return bool(cap.grab())
    except cv2.error:
        return False


def avi_cut(path: Path) -> tuple[bool, str | None]:
    """(is it an AVI, the chunk the file ends inside when its RIFF chunks run past its end:
    "movi" for frame data, "idx1" for only the index; None when whole).

    OpenCV decodes a cut AVI without complaint and hands back a half-grey last frame, and when
    the cut falls in the last frame even the frame count agrees, so the container is the only
    reliable witness."""
    size = path.stat().st_size
    with open(path, "rb") as f:

        def chunk(pos: int) -> tuple[bytes, int, bytes]:
            f.seek(pos)
            head = f.read(12)
            return head[:4], int.from_bytes(head[4:8], "little"), head[8:12]

        tag, _, form = chunk(0)
        if tag != b"RIFF" or form != b"AVI ":
            return False, None
        pos = 0
        while pos + 8 <= size:
            tag, n, form = chunk(pos)
            if tag != b"RIFF":  # trailing bytes after the last RIFF: not ours to judge
                break
            if pos + 8 + n > size:
                sub = pos + 12
                while sub + 8 <= size:
                    stag, sn, sform = chunk(sub)
                    if sub + 8 + sn > size:
                        name = sform if stag == b"LIST" else stag
                        return True, name.decode("latin-1").strip() or "?"
                    sub += 8 + sn + (sn & 1)
                return True, form.decode("latin-1").strip() or "RIFF"
            pos += 8 + n + (n & 1)
    return True, None


@dataclass
class VideoDecode:
    header_frames: int  # what the container says (CAP_PROP_FRAME_COUNT); 0 when unknown
    is_avi: bool
    avi_cut: str | None  # see avi_cut
    decoded: int = 0  # frames grabbed
    failed_at: int | None = None  # frame that was grabbed but could not be retrieved
    dropped: int | None = None  # last frame, not stored because the cut may run through it

    @property
    def short(self) -> bool:
        return self.failed_at is not None or self.decoded < self.header_frames or self.avi_cut is not None

    @property
    def lost_inside(self) -> bool:
        """Fewer frames than declared from an AVI that is whole: FFmpeg skipped a damaged
        packet somewhere inside, silently, so later frames are numbered one early."""
        return self.short and self.is_avi and self.avi_cut is None and self.failed_at is None

    @property
    def last_suspect(self) -> bool:
        # A cut through frame data (or a short non-AVI, where we cannot tell) may leave the
        # last frame half decoded; a cut in the index only leaves every frame whole.
        return self.short and not self.lost_inside and self.failed_at is None and self.avi_cut != "idx1"

    @property
    def expected(self) -> int:
        """The video's frame count for checking labels: a truncated video still had all of them."""
        return max(self.decoded, self.header_frames)


def decode_frames(
    cap: cv2.VideoCapture, state: VideoDecode, stride: int = 1, skip: Set[int] = frozenset()
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Every `stride`-th frame (1, 1 + stride, ...) of an opened capture as (frame number from
    1, BGR image, or None for a number in `skip`: not retrieved, e.g. already stored), with
    `state` kept up to date (decoded, failed_at, dropped). A frame that cannot be retrieved
    ends the reading.

    Each kept frame is held back until the next grab succeeds: only then is it known not to be
    the last frame of a file that may be cut through it."""
    held: tuple[int, np.ndarray | None] | None = None
    n = 0
    while True:
        if not _grab(cap):
            break
        n += 1
        state.decoded = n
        if held is not None:
            yield held
            held = None
        if (n - 1) % stride:
            continue
        if n in skip:  # retrieving converts the frame; skip that work on a re-run
            held = (n, None)
            continue
        try:
            ok, img = cap.retrieve()
        except cv2.error:
            ok, img = False, None
        if not ok or img is None:
            state.failed_at = n
            break
        held = (n, img)
    if held is not None:
        if state.last_suspect:
            state.dropped = held[0]
        else:
            yield held


def truncation_detail(state: VideoDecode) -> str:
    """What went wrong with a short video, in one line for a reject."""
    parts = [f"decoded {state.decoded} frames"]
    if state.header_frames:
        parts[0] = f"decoded {state.decoded} of the {state.header_frames} frames the container declares"
    if state.failed_at is not None:
        parts.append(f"frame {state.failed_at} could not be decoded")
    if state.avi_cut is not None:
        parts.append(f"the file ends inside its AVI '{state.avi_cut}' chunk")
    if state.dropped is not None:
        parts.append(f"frame {state.dropped} not stored: the cut may run through it")
    return "; ".join(parts)


def first_lost(state: VideoDecode) -> int:
    """The first frame number of a short video that was not passed on."""
    return state.dropped or state.failed_at or (state.decoded + 1)


@dataclass
class FrameSkips:
    """What `decode_frames_skipping` saw: the frames the container declares, those decoded and the
    ones skipped because they could not be decoded (damaged data, or lost at a cut end)."""

    fps: float  # the container's frame rate; 0 when unknown
    header_frames: int  # CAP_PROP_FRAME_COUNT; 0 when unknown
    decoded: int = 0
    corrupt: list[int] = field(default_factory=list)  # frame numbers (from 1) skipped
    last: int = 0  # the last frame number decoded


# A damaged run longer than this many frames ends the reading (the rest counts as skipped).
MAX_CONSECUTIVE_FAILURES = 64


def decode_frames_skipping(
    cap: cv2.VideoCapture, stride: int = 1
) -> tuple[FrameSkips, Iterator[tuple[int, float, np.ndarray]]]:
    """Every `stride`-th frame of an opened capture as (frame number from 1, timestamp in seconds,
    BGR image), going on past frames the decoder cannot decode: for analysis, where a damaged
    frame must cost that frame, not the rest of the video (decode_frames, for ingestion, stops).

    Frames are numbered from their presentation time when the container gives one (so the frames
    after a skipped one keep their numbers), else counted. A frame that fails to decode is tried
    again with the next grab, as long as the container declares more frames (at most
    MAX_CONSECUTIVE_FAILURES in a row); every frame number not decoded is in `skips.corrupt`."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = fps if np.isfinite(fps) and 0 < fps < 1000 else 0.0
    skips = FrameSkips(fps=fps, header_frames=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0))

    def frames() -> Iterator[tuple[int, float, np.ndarray]]:
        failures = 0
        while True:
            if not _grab(cap):
                failures += 1
                more = skips.last + failures <= skips.header_frames
                if more and failures <= MAX_CONSECUTIVE_FAILURES:
                    continue
                break
            failures = 0
            msec = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
            n = skips.last + 1
            if fps and np.isfinite(msec) and msec > 0:
                n = max(n, int(round(msec * fps / 1000.0)) + 1)
            skips.corrupt.extend(range(skips.last + 1, n))
            skips.last = n
            if (n - 1) % stride:
                skips.decoded += 1
                continue
            try:
                ok, img = cap.retrieve()
            except cv2.error:
                ok, img = False, None
            if not ok or img is None:
                skips.corrupt.append(n)
                continue
            skips.decoded += 1
            seconds = msec / 1000.0 if msec > 0 or n == 1 else ((n - 1) / fps if fps else 0.0)
            yield n, seconds, img
        skips.corrupt.extend(range(skips.last + 1, skips.header_frames + 1))

    return skips, frames()
