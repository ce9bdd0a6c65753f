"""A batch of "scraped" images in the OAHEGA layout (one folder per emotion, plus unlabeled),
made from a real face photo pasted into varied scenes, with the awkward files real scrapes
contain: an EXIF-rotated photo, an exact copy, a near-duplicate and (optionally) broken files.

    ROOT/<batch>/{happy,sad,neutral}/<label>_NN.jpg|png   weakly labeled scenes
    ROOT/<batch>/unlabeled/unlabeled_NN.jpg|png           scenes without a label
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from warehouse.atomic import atomic_write_bytes

FOLDERS = ("happy", "sad", "neutral", "unlabeled")
ROTATED = "happy/happy_00.jpg"  # stored sideways with EXIF orientation 6 ("rotate 90 CW")
DUPLICATE = ("unlabeled/copy_of_sad_00.jpg", "sad/sad_00.jpg")  # (copy, original): same bytes
NEAR_DUPLICATE = ("neutral/neutral_00_brighter.jpg", "neutral/neutral_00.jpg")  # (copy, original)
BROKEN_FILES = (
    # (file, the reject reason ingestion must give)
    ("happy/truncated.jpg", "truncated_image"),
    ("sad/empty.jpg", "empty_file"),
    ("neutral/notes.jpg", "not_an_image"),
    ("unlabeled/tiny.png", "too_small"),
)


def _face() -> Image.Image:
    from skimage.data import astronaut

    return Image.fromarray(astronaut()[20:220, 140:340])  # the astronaut's face, roughly square


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:  # a gradient between two colours, at a random angle
        a, b = rng.integers(0, 256, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.5) / 3
        img = a + t[..., None] * (b - a)
    elif kind == 1:  # a few coloured blobs: a tiny random image upscaled smoothly
        cells = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(cells).resize((w, h), Image.Resampling.BICUBIC), np.float64)
    elif kind == 2:  # vertical or horizontal stripes
        colors = rng.integers(0, 256, (int(rng.integers(3, 8)), 3))
        if rng.random() < 0.5:
            img = np.broadcast_to(colors[np.arange(w) * len(colors) // w][None], (h, w, 3))
        else:
            img = np.broadcast_to(colors[np.arange(h) * len(colors) // h][:, None], (h, w, 3))
    else:  # a flat wall with sensor noise
        img = rng.integers(0, 256, 3) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.float64)


def _scene(rng: np.random.Generator, face: Image.Image) -> Image.Image:
    """The face at a random size and place on a random background, sometimes mirrored."""
    w, h = int(rng.integers(160, 321)), int(rng.integers(140, 281))
    canvas = Image.fromarray(background(rng, w, h).astype(np.uint8))
    side = int(rng.integers(int(0.3 * min(w, h)), int(0.75 * min(w, h))))
    f = face.resize((side, side), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        f = f.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas.paste(f, (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))))
    return canvas


def _encode(im: Image.Image, name: str, exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    if name.endswith(".png"):
        im.save(buf, "PNG")
    else:
        im.save(buf, "JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def write_scraped_sample(
    root: str | Path, batch: str = "batch-001", per_label: int = 3, seed: int = 0, broken: bool = True
) -> Path:
    """Write ROOT/<batch>/ with `per_label` scenes in each of FOLDERS (even ones JPEG, odd PNG),
    plus ROTATED, DUPLICATE, NEAR_DUPLICATE and, with `broken`, BROKEN_FILES. The same seed
    writes the same bytes. Returns the batch folder."""
    if per_label < 1:
        raise ValueError("per_label must be >= 1")
    rng = np.random.default_rng(seed)
    face = _face()
    out = Path(root) / batch
    files: dict[str, bytes] = {}
    scenes: dict[str, Image.Image] = {}
    for folder in FOLDERS:
        for n in range(per_label):
            name = f"{folder}/{folder}_{n:02d}.{'jpg' if n % 2 == 0 else 'png'}"
            scenes[name] = _scene(rng, face)
            files[name] = _encode(scenes[name], name)

    # Stored sideways; a viewer (and ingestion) turns it back with the EXIF orientation.
    exif = Image.Exif()
    exif[0x0112] = 6
    files[ROTATED] = _encode(scenes[ROTATED].transpose(Image.Transpose.ROTATE_90), ROTATED, exif.tobytes())
    copy, original = DUPLICATE
    files[copy] = files[original]
    copy, original = NEAR_DUPLICATE
    brighter = np.asarray(scenes[original], np.int16) + 14
    files[copy] = _encode(Image.fromarray(np.clip(brighter, 0, 255).astype(np.uint8)), copy)

    if broken:
        cut = _encode(_scene(rng, face), "x.jpg")
        files["happy/truncated.jpg"] = cut[: len(cut) // 2]
        files["sad/empty.jpg"] = b""
        files["neutral/notes.jpg"] = b"these are my notes, not a photo\n"
        files["unlabeled/tiny.png"] = _encode(face.resize((20, 20), Image.Resampling.LANCZOS), "tiny.png")

    for name, data in files.items():
        # Atomic: a watcher of the drop folder never sees half a file (temp names are hidden).
        atomic_write_bytes(out / name, data, durable=False)
    return out
