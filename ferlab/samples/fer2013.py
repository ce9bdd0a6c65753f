"""A FER-2013 CSV in Kaggle's exact format (emotion,pixels,Usage), made from a real face photo
(or random pixels for benchmarks), with optional broken rows of every kind ingestion rejects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from warehouse.atomic import atomic_path

USAGES = ("Training", "PublicTest", "PrivateTest")


def _face_crops(rows: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.data import astronaut

    gray = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    face = gray[20:220, 140:340]  # the astronaut's face, roughly square
    out = np.empty((rows, 48, 48), np.uint8)
    for i in range(rows):
        dx, dy = rng.integers(-12, 13, 2)
        scale = rng.uniform(0.85, 1.15)
        h, w = face.shape
        m = cv2.getRotationMatrix2D((w / 2 + dx, h / 2 + dy), rng.uniform(-8, 8), scale)
        warped = cv2.warpAffine(face, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        if rng.random() < 0.5:
            warped = warped[:, ::-1]
        crop = cv2.resize(warped, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
        crop = crop * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20) + rng.normal(0, 3, crop.shape)
        out[i] = np.clip(crop, 0, 255).astype(np.uint8)
    return out


BROKEN_ROWS = (
    # (what ingestion must say, the row's text)
    ("wrong_pixel_count", '3,"' + " ".join(["7"] * 2000) + '",Training'),
    ("non_numeric_pixel", '2,"' + " ".join(["7"] * 2303 + ["x"]) + '",Training'),
    ("pixel_out_of_range", '2,"' + " ".join(["300"] + ["7"] * 2303) + '",PublicTest'),
    ("unknown_emotion", '9,"' + " ".join(["7"] * 2304) + '",Training'),
    ("unknown_usage", '1,"' + " ".join(["7"] * 2304) + '",Holdout'),
    ("wrong_field_count", "4,1 2 3"),
)


def write_fer2013_sample(
    path: str | Path, rows: int = 60, seed: int = 0, faces: bool = True, broken: bool = False
) -> Path:
    """Write `rows` good rows (Usage split ~80/10/10), plus BROKEN_ROWS spread among them."""
    rng = np.random.default_rng(seed)
    pixels = _face_crops(rows, rng) if faces else rng.integers(0, 256, (rows, 48, 48), dtype=np.uint8)
    emotions = rng.integers(0, 7, rows)
    n_train = int(rows * 0.8)
    n_val = (rows - n_train) // 2
    usages = [USAGES[0]] * n_train + [USAGES[1]] * n_val + [USAGES[2]] * (rows - n_train - n_val)
    return write_fer2013_csv(path, pixels, emotions, usages, broken_rows=BROKEN_ROWS if broken else ())


def write_fer2013_csv(
    path: str | Path,
    pixels: np.ndarray,
    emotions: Sequence[int],
    usages: Sequence[str],
    broken_rows: Sequence[tuple[str, str]] = (),
) -> Path:
    """Kaggle's format: header `emotion,pixels,Usage`, one row per (48, 48) uint8 image;
    `broken_rows` texts are spread among the good rows (every third line from line 3)."""
    lines = [f"{e},{' '.join(map(str, p.ravel().tolist()))},{u}" for e, p, u in zip(emotions, pixels, usages)]
    for k, (_, text) in enumerate(broken_rows):
        lines.insert(min(len(lines), 1 + k * 3), text)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("emotion,pixels,Usage\n" + "\n".join(lines) + "\n")
    return path
