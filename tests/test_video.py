"""warehouse.video, the one frame reader of DISFA ingestion and detection: whole files give
every kept frame; a cut file never passes on a frame the cut may run through, and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from labeling.detection.media import Frame, iter_frames
from warehouse.video import VideoDecode, avi_cut, decode_frames, first_lost, truncation_detail

FRAMES = 24
SIZE = (64, 48)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    rng = np.random.default_rng(0)
    for n in range(FRAMES):
        frame = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), np.uint8)
        cv2.putText(frame, str(n), (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def _read(path: Path, stride: int = 1) -> tuple[list[int], VideoDecode]:
    is_avi, cut = avi_cut(path)
    cap = cv2.VideoCapture(str(path))
    try:
        state = VideoDecode(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), is_avi, cut)
        return [n for n, _ in decode_frames(cap, state, stride)], state
    finally:
        cap.release()


def test_a_whole_video_gives_every_kept_frame(video):
    assert avi_cut(video) == (True, None)
    numbers, state = _read(video, stride=5)
    assert numbers == list(range(1, FRAMES + 1, 5))
    assert state.decoded == FRAMES and not state.short


def test_a_cut_video_drops_the_frame_the_cut_may_run_through(video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    assert avi_cut(cut) == (True, "movi")
    numbers, state = _read(cut)
    assert state.short and 0 < state.decoded < FRAMES
    assert state.dropped == state.decoded  # the last frame grabbed is held back, not passed on
    assert numbers == list(range(1, state.decoded))
    assert first_lost(state) == state.decoded
    detail = truncation_detail(state)
    assert f"of the {FRAMES} frames" in detail and "'movi' chunk" in detail


def test_detection_reads_frames_the_same_way(video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    for path in (video, cut):
        numbers, state = _read(path, stride=3)
        items = list(iter_frames([path], stride=3))
        assert [f.frame_index for f in items if isinstance(f, Frame)] == numbers
        rejects = [r for r in items if not isinstance(r, Frame)]
        if state.short:
            assert [(r.reason, r.line) for r in rejects] == [("truncated_video", first_lost(state))]
        else:
            assert rejects == []


def test_opening_a_truncated_mp4_leaves_stderr_to_the_caller(tmp_path):
    """Issue 21.10d: FFmpeg wrote "moov atom not found" on stderr for a cut MP4, beside ferlab's own
    line. `open_video` keeps FFmpeg's log quiet (read once per process: hence a fresh one here)."""
    whole = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 10, SIZE)
    rng = np.random.default_rng(0)
    for _ in range(10):  # noise: the frame data fills most of the file, the cut falls in it
        writer.write(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), np.uint8))
    writer.release()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    def run(code: str) -> subprocess.CompletedProcess:
        # without the level an in-process open_video (an earlier test) set in this process
        env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
        return subprocess.run([sys.executable, "-c", code, str(cut)], capture_output=True, text=True, env=env)

    plain = run("import sys, cv2; print(cv2.VideoCapture(sys.argv[1]).isOpened())")
    if "moov atom not found" not in plain.stderr:
        pytest.skip(f"this OpenCV's FFmpeg is quiet already: {plain.stderr!r}")
    quiet = run(
        "import sys; from warehouse.video import open_video; print(open_video(sys.argv[1]).isOpened())"
    )
    assert (quiet.stdout, quiet.stderr) == ("False\n", "")
