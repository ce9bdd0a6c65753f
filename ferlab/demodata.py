"""Demo data: real faces with rendered Action Units, written in the three real source formats,
with the ground truth of every face that was drawn.

    OUT/disfa/...            DISFA layout: per subject a video with onset-apex-offset AU
                             episodes, head motion and lighting drift, one SNxxx_auN.txt per AU
    OUT/fer2013.csv          Kaggle format: 48x48 gray face crops, emotion 0..6, Usage split
                             by identity (Training / PublicTest / PrivateTest identities differ)
    OUT/scraped/batch-001/   scenes of 0-3 faces: one folder per emotion + unlabeled/, and a
                             few broken files (truncated JPEG, zero-byte, text renamed .jpg)
    OUT/truth/faces.csv      every rendered face: path, frame, box x1,y1,x2,y2, AU intensities,
                             emotion, identity
    OUT/truth/contact_sheet.png   each AU at intensity 0 / 3 / 5

Emotion labels follow from the AUs (`emotion_from_aus`), so a label never disagrees with
the face. The expressions are exaggerated on purpose: this is demo data, made so that every
path of the platform can be exercised and scored honestly, not a stand-in for real faces.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ferlab.samples.disfa import disfa_label_path, disfa_video_path, write_avi, write_label_file
from ferlab.samples.fer2013 import write_fer2013_csv
from ferlab.samples.scraped import background
from ferlab.synth import (
    EMOTION_AUS,
    RENDERABLE_AUS,
    SourceFace,
    contact_sheet,
    emotion_aus,
    identity_variants,
    load_source_faces,
    render,
)
from warehouse.atomic import atomic_path, atomic_write_bytes
from warehouse.schemas import AU_PRESENT_THRESHOLD, DISFA_AUS, EMOTIONS, SEED_AUS

FER_USAGE = ("Training", "PublicTest", "PrivateTest")
FRAME_SIZE = (480, 360)  # DISFA's own videos are 1024x768; smaller keeps the demo quick
SCENE_SIZE = (640, 480)
TRUTH_AUS = tuple(sorted(set(DISFA_AUS) | set(RENDERABLE_AUS)))
BROKEN_SCRAPED = (
    ("unlabeled/truncated.jpg", "truncated_image"),
    ("unlabeled/empty.jpg", "empty_file"),
    ("unlabeled/readme.jpg", "not_an_image"),
)


@dataclass(frozen=True)
class Size:
    identity_variants: int  # extra identities per source face
    disfa_subjects: int
    disfa_frames: int
    fer_per_identity_emotion: int
    scenes_per_emotion: int
    unlabeled_scenes: int


SIZES = {
    "tiny": Size(0, 1, 30, 1, 1, 2),  # for tests of the writers themselves
    # 15 people (5 photos x 3 variants), each a short DISFA video: enough held-out people for
    # subject-exclusive AU folds
    "small": Size(2, 15, 64, 6, 3, 8),
    "medium": Size(2, 8, 900, 8, 12, 40),
}


@dataclass
class TruthRow:
    path: str
    frame: int | None
    box: tuple[float, float, float, float]
    aus: Mapping[int, float]
    emotion: str
    identity: str


def emotion_from_aus(aus: Mapping[int, float]) -> str:
    """The Ekman emotion whose core AUs (weight >= 0.5) are all present (intensity >= 2); the
    largest such pattern wins; no AU present -> neutral; present AUs that match no pattern
    -> "" (no emotion label)."""
    present = {au for au, v in aus.items() if v >= AU_PRESENT_THRESHOLD}
    if not present:
        return "neutral"
    best, best_size = "", 0
    for emotion, weights in EMOTION_AUS.items():
        core = {au for au, w in weights.items() if w >= 0.5}
        if core and core <= present and len(core) > best_size:
            best, best_size = emotion, len(core)
    return best


def face_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """A detector-style face box from 68 landmarks: jaw and brows, extended up to the forehead."""
    x1, y1 = landmarks.min(axis=0)
    x2, y2 = landmarks.max(axis=0)
    brow = landmarks[17:27, 1].min()
    forehead = 0.22 * (y2 - brow)
    return float(x1), float(brow - forehead), float(x2), float(y2)


def _transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


def _identities(seed: int, size: Size, photos: list[Path] | None) -> list[SourceFace]:
    faces = load_source_faces(photos)
    rng = np.random.default_rng([seed, 1])
    return faces + identity_variants(faces, size.identity_variants, rng)


# ---- DISFA --------------------------------------------------------------------------------
# Each subject shows every AU of the AU model's default set but one pair, the pair turning with
# the subject number: an AU is then missing from at most a quarter of the subjects, so every
# subject-exclusive fold (a third of them) holds people who show it.
OMITTED_PAIRS: tuple[tuple[int, int], ...] = ((1, 26), (2, 9), (4, 25), (6, 12))


def shown_aus(subject_index: int) -> tuple[int, ...]:
    """The AUs of the model's default set that subject number `subject_index` shows."""
    omitted = OMITTED_PAIRS[subject_index % len(OMITTED_PAIRS)]
    return tuple(au for au in SEED_AUS if au not in omitted)


def _episodes(frames: int, rng: np.random.Generator, required: Sequence[int] = ()) -> dict[int, np.ndarray]:
    """Integer AU intensities per frame: neutral gaps, then onset-apex-offset episodes. The first
    episodes show the `required` AUs, in random groups of three; the rest are an emotion (its AU
    pattern) or one or two single AUs (so AUs are not always together)."""
    curves = {au: np.zeros(frames) for au in TRUTH_AUS}
    pending = list(rng.permutation(np.asarray(required, dtype=np.int64))) if len(required) else []
    t = int(rng.integers(3, 8)) if pending else int(rng.integers(5, 20))
    while t < frames:
        if pending:
            length = int(rng.integers(24, 29))  # short: the required episodes fit a short video
            group, pending = pending[:3], pending[3:]
            aus = {int(au): float(rng.uniform(2.5, 5)) for au in group}
        else:
            length = int(rng.integers(25, 60))
            if rng.random() < 0.6:
                aus = emotion_aus(str(rng.choice([e for e in EMOTION_AUS if e != "neutral"])), rng)
            else:
                aus = {
                    int(au): float(rng.uniform(2.5, 5))
                    for au in rng.choice(RENDERABLE_AUS, int(rng.integers(1, 3)))
                }
        onset, apex = int(length * rng.uniform(0.2, 0.35)), int(length * rng.uniform(0.3, 0.5))
        offset = length - onset - apex
        shape = np.concatenate(
            [np.linspace(0, 1, onset, endpoint=False), np.ones(apex), np.linspace(1, 0, offset)]
        )
        end = min(frames, t + length)
        for au, apex_value in aus.items():
            curves[au][t:end] = np.maximum(curves[au][t:end], apex_value * shape[: end - t])
        t = end + (int(rng.integers(3, 8)) if pending else int(rng.integers(5, 25)))
    return {au: np.clip(np.rint(c), 0, 5).astype(np.int64) for au, c in curves.items()}


def _disfa_frames(
    face: SourceFace,
    labels: dict[int, np.ndarray],
    shown_labels: dict[int, np.ndarray],
    rng: np.random.Generator,
    truth: list[TruthRow],
    path: str,
) -> Iterator[np.ndarray]:
    """Frames rendered with `labels`; the truth (and the label files) carry `shown_labels`,
    which add what the source face shows of its own (base_aus)."""
    frames = len(next(iter(labels.values())))
    w, h = FRAME_SIZE
    side = face.image.shape[0]
    phase = rng.uniform(0, 2 * np.pi, 4)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(frames):
        aus = {au: float(labels[au][i]) for au in RENDERABLE_AUS if labels[au][i] > 0}
        key = tuple(sorted(aus.items()))
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[key] = render(face, aus)
        image, landmarks = cache[key]
        s = i / max(frames - 1, 1)
        scale = 1.3 * h / side * (1 + 0.05 * np.sin(2 * np.pi * s * 1.5 + phase[0]))
        angle = 5 * np.sin(2 * np.pi * s * 2 + phase[1])  # head roll, degrees
        cx = w / 2 + 0.06 * w * np.sin(2 * np.pi * s + phase[2])
        cy = h / 2 + 0.04 * h * np.cos(2 * np.pi * s * 1.3 + phase[3])
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
        m[:, 2] += (cx - side / 2, cy - side / 2)
        frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gain = 0.85 + 0.25 * s  # the room's light drifts over the recording
        frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        box = face_box(_transform(landmarks, m))
        shown = {au: float(shown_labels[au][i]) for au in TRUTH_AUS}
        truth.append(TruthRow(path, i + 1, box, shown, emotion_from_aus(shown), face.identity))
        yield cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)


def write_disfa(out: Path, faces: list[SourceFace], size: Size, seed: int, truth: list[TruthRow]) -> None:
    for k, face in enumerate(faces[: size.disfa_subjects]):
        subject = f"SN{k + 1:03d}"
        rng = np.random.default_rng([seed, 2, k])
        labels = _episodes(size.disfa_frames, rng, shown_aus(k))
        shown = {
            au: np.clip(np.rint(v + face.base_aus.get(au, 0.0)), 0, 5).astype(np.int64)
            for au, v in labels.items()
        }
        video = disfa_video_path(out / "disfa", subject, "left")
        write_avi(video, _disfa_frames(face, labels, shown, rng, truth, str(video.relative_to(out))))
        for au in DISFA_AUS:
            write_label_file(disfa_label_path(out / "disfa", subject, au), shown[au])


# ---- FER-2013 -----------------------------------------------------------------------------
def _fer_usage(identity_index: int, n_identities: int) -> str:
    """Whole identities per split, so test faces are of people never seen in training."""
    held_out = max(1, n_identities // 7)
    if identity_index >= n_identities - held_out:
        return FER_USAGE[2]
    if identity_index >= n_identities - 2 * held_out:
        return FER_USAGE[1]
    return FER_USAGE[0]


def _crop48(
    image: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
) -> np.ndarray:
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * rng.uniform(1.0, 1.15)
    cx, cy = (x1 + x2) / 2 + rng.normal(0, 0.02) * side, (y1 + y2) / 2 + rng.normal(0, 0.02) * side
    m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-6, 6), 48 / side)
    m[:, 2] += (24 - cx, 24 - cy)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.warpAffine(gray, m, (48, 48), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def write_fer2013(out: Path, faces: list[SourceFace], size: Size, seed: int, truth: list[TruthRow]) -> None:
    rng = np.random.default_rng([seed, 3])
    pixels, emotions, usages = [], [], []
    for k, face in enumerate(faces):
        for emotion in EMOTIONS:
            for _ in range(size.fer_per_identity_emotion):
                aus = emotion_aus(emotion, rng)
                shown = {au: aus.get(au, 0.0) + face.base_aus.get(au, 0.0) for au in TRUTH_AUS}
                label = emotion_from_aus(shown)
                if label not in EMOTIONS:
                    continue  # an AU pattern that names no emotion has no FER-2013 row
                image, landmarks = render(face, aus)
                crop = _crop48(image, face_box(landmarks), rng)
                line = len(pixels) + 2
                pixels.append(crop)
                emotions.append(EMOTIONS.index(label))
                usages.append(_fer_usage(k, len(faces)))
                truth.append(
                    TruthRow(f"fer2013.csv#line={line}", None, (0, 0, 48, 48), shown, label, face.identity)
                )
    write_fer2013_csv(out / "fer2013.csv", np.stack(pixels), emotions, usages)


# ---- scraped scenes -----------------------------------------------------------------------
def _paste_face(
    canvas: np.ndarray, face: SourceFace, aus: Mapping[int, float], cell: tuple[int, int, int, int], rng
) -> tuple[float, float, float, float]:
    """Render, scale into the cell and blend with a soft ellipse (face + hair); return the box."""
    image, landmarks = render(face, aus)
    bx1, by1, bx2, by2 = face_box(landmarks)
    cx0, cy0, cw, ch = cell
    face_px = rng.uniform(0.22, 0.45) * min(cw, ch)
    scale = face_px / (bx2 - bx1)
    fx, fy = (bx1 + bx2) / 2, (by1 + by2) / 2
    tx = cx0 + cw / 2 + rng.uniform(-0.15, 0.15) * cw
    ty = cy0 + ch / 2 + rng.uniform(-0.15, 0.15) * ch
    m = np.array([[scale, 0, tx - scale * fx], [0, scale, ty - scale * fy]], np.float64)
    hgt, wid = canvas.shape[:2]
    warped = cv2.warpAffine(image, m, (wid, hgt), flags=cv2.INTER_AREA)
    mask = np.zeros((hgt, wid), np.float32)
    axes = (int(0.85 * face_px), int(1.1 * face_px))
    cv2.ellipse(mask, (int(tx), int(ty - 0.1 * face_px)), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.12 * face_px)[..., None]
    canvas[:] = warped * mask + canvas * (1 - mask)
    return face_box(_transform(landmarks, m))


def _encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _scene(
    faces: list[SourceFace], emotions: list[str], rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[SourceFace, dict[int, float], tuple]]]:
    w, h = SCENE_SIZE
    canvas = background(rng, w, h).astype(np.float32)
    cols = max(1, len(emotions))
    placed = []
    for j, emotion in enumerate(emotions):
        face = faces[int(rng.integers(len(faces)))]
        aus = emotion_aus(emotion, rng)
        box = _paste_face(canvas, face, aus, (j * w // cols, 0, w // cols, h), rng)
        placed.append((face, aus, box))
    return np.clip(canvas, 0, 255).astype(np.uint8), placed


def write_scraped(out: Path, faces: list[SourceFace], size: Size, seed: int, truth: list[TruthRow]) -> None:
    rng = np.random.default_rng([seed, 4])
    batch = out / "scraped" / "batch-001"
    jobs = [(e, f"{e}/{e}_{n:03d}.jpg", [e]) for e in EMOTIONS for n in range(size.scenes_per_emotion)]
    for n in range(size.unlabeled_scenes):
        count = int(rng.integers(0, 4))
        jobs.append(("", f"unlabeled/scene_{n:03d}.jpg", [str(rng.choice(EMOTIONS)) for _ in range(count)]))
    for _, name, emotions in jobs:
        image, placed = _scene(faces, emotions, rng)
        atomic_write_bytes(batch / name, _encode_jpeg(image), durable=False)
        rel = str((batch / name).relative_to(out))
        for face, aus, box in placed:
            shown = {au: aus.get(au, 0.0) + face.base_aus.get(au, 0.0) for au in TRUTH_AUS}
            truth.append(TruthRow(rel, None, box, shown, emotion_from_aus(shown), face.identity))
    good = _encode_jpeg(_scene(faces, ["happy"], rng)[0])
    broken = {
        "unlabeled/truncated.jpg": good[: len(good) // 2],
        "unlabeled/empty.jpg": b"",
        "unlabeled/readme.jpg": b"scraped with a crawler; not an image\n",
    }
    for name, data in broken.items():
        atomic_write_bytes(batch / name, data, durable=False)


# ---- truth and entry point ----------------------------------------------------------------
def write_truth(out: Path, truth: list[TruthRow]) -> Path:
    path = out / "truth" / "faces.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ["path", "frame", "x1", "y1", "x2", "y2", *(f"au{au}" for au in TRUTH_AUS), "emotion", "identity"]
        )
        for r in truth:
            writer.writerow(
                [
                    r.path,
                    "" if r.frame is None else r.frame,
                    *(f"{v:.1f}" for v in r.box),
                    *(f"{r.aus.get(au, 0.0):.2f}" for au in TRUTH_AUS),
                    r.emotion,
                    r.identity,
                ]
            )
    return path


def generate_demo_data(
    out: str | Path, seed: int = 0, size: str = "small", photos: list[Path] | None = None
) -> Path:
    """Write every demo source under `out` (deterministic for a seed); return `out`."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    out = Path(out)
    spec = SIZES[size]
    faces = _identities(seed, spec, photos)
    truth: list[TruthRow] = []
    write_disfa(out, faces, spec, seed, truth)
    write_fer2013(out, faces, spec, seed, truth)
    write_scraped(out, faces, spec, seed, truth)
    write_truth(out, truth)
    contact_sheet(faces[0], out / "truth" / "contact_sheet.png")
    return out
