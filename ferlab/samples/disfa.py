"""A tiny DISFA look-alike in the real layout, for tests and demos.

    ROOT/Videos_LeftCamera/LeftVideoSN001_comp.avi
    ROOT/Videos_RightCamera/RightVideoSN001_Comp.avi
    ROOT/ActionUnit_Labels/SN001/SN001_au1.txt   (one "frame,intensity" line per frame, 1-based)

Videos are MJPG AVIs of a real face photo (skimage's astronaut), panned, zoomed and
brightened a little per frame so consecutive frames differ like a real recording.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from warehouse.schemas import DISFA_AUS

FPS = 20.0
_CAMERA_DIRS = {"left": "Videos_LeftCamera", "right": "Videos_RightCamera"}


def disfa_video_path(root: str | Path, subject: str, camera: str) -> Path:
    """Where the real DISFA release puts a subject's video (the right camera says "_Comp")."""
    root = Path(root)
    if camera == "left":
        return root / _CAMERA_DIRS["left"] / f"LeftVideo{subject}_comp.avi"
    if camera == "right":
        return root / _CAMERA_DIRS["right"] / f"RightVideo{subject}_Comp.avi"
    raise ValueError(f"camera must be 'left' or 'right', not {camera!r}")


def disfa_label_path(root: str | Path, subject: str, au: int) -> Path:
    return Path(root) / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt"


def _frames(n: int, size: tuple[int, int], rng: np.random.Generator, mirror: bool) -> list[np.ndarray]:
    face = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    face_x = 0.4
    if mirror:  # the other camera sees the face from the other side
        face = np.ascontiguousarray(face[:, ::-1])
        face_x = 1 - face_x
    h0, w0 = face.shape[:2]
    width, height = size
    aspect = width / height
    phase = rng.uniform(0, 2 * np.pi, size=3)
    out = []
    for t in range(n):
        s = t / max(n - 1, 1)
        zoom = 0.5 + 0.06 * np.sin(2 * np.pi * s + phase[0])  # share of the photo's height shown
        ch = zoom * h0
        cw = min(ch * aspect, w0)
        # Centred on the face (upper left of the photo), drifting a little like a head would.
        cx = face_x * w0 + 0.03 * w0 * np.sin(2 * np.pi * s + phase[1])
        cy = 0.3 * h0 + 0.02 * h0 * np.cos(2 * np.pi * s + phase[2])
        x0 = float(np.clip(cx - cw / 2, 0, w0 - cw))
        y0 = float(np.clip(cy - ch / 2, 0, h0 - ch))
        # An affine crop+resize keeps sub-pixel pans smooth (no integer jumps).
        m = np.array([[width / cw, 0, -x0 * width / cw], [0, height / ch, -y0 * height / ch]])
        frame = cv2.warpAffine(face, m, (width, height), flags=cv2.INTER_LINEAR)
        gain = 0.85 + 0.3 * s  # slow brightness drift, like lights warming up
        out.append(np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out


def _intensities(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth integer intensities 0..5: a random walk, smoothed, squashed to 0..5."""
    walk = np.cumsum(rng.normal(size=n + 8))
    smooth = np.convolve(walk, np.ones(9) / 9, mode="valid")[:n]
    span = np.ptp(smooth) or 1.0
    return np.rint(5 * (smooth - smooth.min()) / span).astype(np.int64)


def write_disfa_sample(
    root: str | Path,
    subjects: tuple[str, ...] = ("SN001", "SN002"),
    frames: int = 40,
    size: tuple[int, int] = (320, 240),
    cameras: tuple[str, ...] = ("left",),
    seed: int = 0,
) -> Path:
    """Write a small DISFA-layout tree under `root` (size is width, height); return root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for subject in subjects:
        for camera in cameras:
            write_avi(
                disfa_video_path(root, subject, camera), _frames(frames, size, rng, mirror=camera == "right")
            )
        for au in DISFA_AUS:
            write_label_file(disfa_label_path(root, subject, au), _intensities(frames, rng))
    return root


def write_avi(path: str | Path, frames: Iterable[np.ndarray], fps: float = FPS) -> Path:
    """BGR frames (all one size) -> an MJPG AVI, as DISFA ships them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write MJPG video {path}")
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    return path


def write_label_file(path: str | Path, intensities: np.ndarray) -> Path:
    """One `frame,intensity` line per frame, frames 1-based (DISFA's label format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f},{int(v)}\n" for f, v in enumerate(intensities, start=1)))
    return path
