"""Full-size inputs in the real formats, cheap to make, deterministic by seed, streamed to disk.

- scraped: N distinct JPEGs (320x240 .. 640x480) in batch folders of the OAHEGA layout
  (ROOT/batch-NNNN/<emotion or unlabeled>/img_NNNNNNN.jpg, the folder a weak label), each image a
  random coarse colour field + a few shapes + sensor noise (so perceptual hashes differ), some
  with the demo's face pasted in, and a known share of near-duplicates: an earlier image (this
  batch or an earlier one) rendered again, resized and re-encoded at another JPEG quality. The
  plan (which image is a copy of which) is sequential and prefix-closed, and every image is
  rendered from its own seed, so the first k batches of a 100,000-image drop are the k batches of
  a smaller one. `manifest.jsonl` lists the planted pairs by file and sha256 (= image_id).
- fer2013: Kaggle's CSV (emotion,pixels,Usage) at any row count, written in chunks, the rows
  the same face crops as ferlab.samples.fer2013 makes.
- disfa: S subjects x F frames at 1024x768, MJPG AVIs in the DISFA layout (ferlab.samples.disfa's
  paths and writers) + one label file per AU; every frame distinct (the camera does a slow random
  walk in pan, zoom, roll and exposure, never a loop), frames streamed to the writer.

Each generator writes into a folder and leaves `.done` (JSON: parameters, seconds, bytes)
there: a folder with a matching `.done` is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

DONE = ".done"
EMOTION_FOLDERS = ("happy", "sad", "neutral", "angry", "surprise", "fear", "disgust")
UNLABELED = "unlabeled"
SCRAPED_MANIFEST = "manifest.jsonl"


# ---- caching ----------------------------------------------------------------------------------
def _cached(folder: Path, params: dict) -> dict | None:
    done = folder / DONE
    if done.is_file():
        meta = json.loads(done.read_text())
        if meta.get("params") == params:
            return meta
    return None


def _finish(folder: Path, params: dict, started: float, **extra) -> dict:
    meta = {
        "params": params,
        "seconds": round(time.perf_counter() - started, 2),
        "bytes": du_bytes(folder),
        **extra,
    }
    (folder / DONE).write_text(json.dumps(meta))
    return meta


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def du_bytes(path: Path) -> int:
    """Disk used under `path` (allocated blocks, as `du` counts them), links not followed."""
    total = 0
    stack = [Path(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
        except OSError:
            continue
    return total


def _face_bgr() -> np.ndarray:
    from skimage.data import astronaut

    return cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)


# ---- scraped ----------------------------------------------------------------------------------
def plan_scraped(n: int, seed: int, near_dup_rate: float) -> list[int]:
    """original[i]: -1 for a new image, else the index of the earlier image that image i is a
    near-duplicate of. An original is copied at most once and is never a copy itself, so each
    planted pair is exactly one near_duplicates row. Prefix-closed: plan(n)[:k] == plan(k)."""
    rng = np.random.default_rng([seed, 0xC0FFEE])
    original = [-1] * n
    used: set[int] = set()
    for i in range(n):
        is_copy = rng.random() < near_dup_rate
        j = int(rng.integers(0, i)) if i > 0 else -1
        if is_copy and j >= 0 and original[j] == -1 and j not in used:
            original[i] = j
            used.add(j)
    return original


def folder_for(i: int, seed: int) -> str:
    r = np.random.default_rng([seed, i, 1]).random()
    if r < 0.3:
        return UNLABELED
    return EMOTION_FOLDERS[int((r - 0.3) / 0.7 * len(EMOTION_FOLDERS))]


def render_scene(i: int, seed: int, face: np.ndarray | None = None, face_rate: float = 0.2) -> np.ndarray:
    """Image i (BGR uint8), from its own seed: a coarse random colour field (a 6..12 cell grid,
    upscaled smoothly), 2..6 filled shapes, sensor noise, and (a `face_rate` share) the face."""
    rng = np.random.default_rng([seed, i])
    w = int(rng.integers(320, 641))
    h = int(rng.integers(240, 481))
    gy, gx = (int(v) for v in rng.integers(6, 13, 2))
    cells = rng.integers(0, 256, (gy, gx, 3), dtype=np.uint8)
    img = cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(min(w, h) // 10, min(w, h) // 2))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x - s // 2, y - s // 3), (x + s // 2, y + s // 3), color, -1)
        else:
            cv2.circle(img, (x, y), s // 2, color, -1)
    if face is not None and rng.random() < face_rate:
        side = int(rng.integers(int(0.3 * min(w, h)), int(0.7 * min(w, h))))
        crop = face[20:220, 140:340]  # the astronaut's face, roughly square
        f = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            f = f[:, ::-1]
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        img[y0 : y0 + side, x0 : x0 + side] = f
    noise = rng.integers(-6, 7, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _near_copy(img: np.ndarray, i: int, seed: int) -> np.ndarray:
    """A re-scaled copy (85..95 % of the size), as a re-post of the same picture would be."""
    rng = np.random.default_rng([seed, i, 2])
    scale = rng.uniform(0.85, 0.95)
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 could not encode a JPEG")
    return buf.tobytes()


def scraped_batches(n: int, batch_size: int) -> list[tuple[str, range]]:
    """The batch folders of an n-image drop and the image indices each holds."""
    return [
        (f"batch-{b:04d}", range(s, min(n, s + batch_size))) for b, s in enumerate(range(0, n, batch_size))
    ]


def _write_batch(
    root: Path, batch: str, indices: range, original: list[int], keep: set[int], seed: int, face_rate: float
) -> dict[int, tuple[str, str]]:
    """Write one batch folder; return {i: (relative path, sha256)} for the images in `keep`."""
    face = _face_bgr()
    out: dict[int, tuple[str, str]] = {}
    for i in indices:
        j = original[i]
        q_rng = np.random.default_rng([seed, i, 3])
        if j < 0:
            data = _jpeg(render_scene(i, seed, face, face_rate), int(q_rng.integers(88, 96)))
        else:  # the original rendered again (the same pixels), smaller, at a lower quality
            img = _near_copy(render_scene(j, seed, face, face_rate), i, seed)
            data = _jpeg(img, int(q_rng.integers(70, 84)))
        name = f"{batch}/{folder_for(i, seed)}/img_{i:07d}.jpg"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if i in keep:
            out[i] = (name, hashlib.sha256(data).hexdigest())
    return out


def write_scraped_drop(
    root: str | Path,
    n: int,
    batch_size: int = 5000,
    seed: int = 0,
    near_dup_rate: float = 0.02,
    face_rate: float = 0.2,
    jobs: int = 1,
) -> dict:
    """ROOT/batch-NNNN/<folder>/img_NNNNNNN.jpg for n images (see the module docstring) and
    ROOT/manifest.jsonl, one line per planted near-duplicate pair:
    {"copy": rel, "original": rel, "copy_id": sha256, "original_id": sha256}. Batches are
    written by `jobs` processes. Returns .done's JSON (params, seconds, bytes, images, planted)."""
    root = Path(root)
    params = {
        "n": n,
        "batch_size": batch_size,
        "seed": seed,
        "near_dup_rate": near_dup_rate,
        "face_rate": face_rate,
    }
    if (meta := _cached(root, params)) is not None:
        return meta
    started = time.perf_counter()
    _fresh(root)
    original = plan_scraped(n, seed, near_dup_rate)
    keep = {j for j in original if j >= 0} | {i for i, j in enumerate(original) if j >= 0}
    written: dict[int, tuple[str, str]] = {}
    tasks = [
        (root, b, idx, original, keep & set(idx), seed, face_rate)
        for b, idx in scraped_batches(n, batch_size)
    ]
    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(tasks))) as pool:
            for part in pool.map(_write_batch, *zip(*tasks)):
                written.update(part)
    else:
        for task in tasks:
            written.update(_write_batch(*task))
    pairs = [(i, j) for i, j in enumerate(original) if j >= 0]
    with (root / SCRAPED_MANIFEST).open("w") as manifest:
        for i, j in pairs:
            row = {
                "copy": written[i][0],
                "original": written[j][0],
                "copy_id": written[i][1],
                "original_id": written[j][1],
            }
            manifest.write(json.dumps(row) + "\n")
    return _finish(root, params, started, images=n, planted=len(pairs))


def planted_pairs(root: str | Path, upto: int | None = None) -> set[tuple[str, str]]:
    """(copy image_id, original image_id) of the pairs planted among the first `upto` images."""
    pairs = set()
    for line in (Path(root) / SCRAPED_MANIFEST).read_text().splitlines():
        row = json.loads(line)
        if upto is None or int(Path(row["copy"]).stem.split("_")[1]) < upto:
            pairs.add((row["copy_id"], row["original_id"]))
    return pairs


# ---- FER-2013 ---------------------------------------------------------------------------------
def write_fer2013(path: str | Path, rows: int, seed: int = 0, chunk: int = 2000) -> dict:
    """Kaggle's fer2013.csv with `rows` face rows (Usage ~80/10/10 in file order), written
    `chunk` rows at a time; `.done` lies next to it as <name>.done."""
    from ferlab.samples.fer2013 import USAGES, _face_crops

    path = Path(path)
    folder = path.parent
    params = {"rows": rows, "seed": seed, "name": path.name}
    marker = folder / (path.name + DONE)
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params and path.is_file():
        return json.loads(marker.read_text())
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    n_train = int(rows * 0.8)
    n_val = (rows - n_train) // 2
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for start in range(0, rows, chunk):
            rng = np.random.default_rng([seed, start])
            k = min(chunk, rows - start)
            pixels = _face_crops(k, rng)
            emotions = rng.integers(0, 7, k)
            lines = []
            for r in range(k):
                n = start + r
                usage = USAGES[0] if n < n_train else USAGES[1] if n < n_train + n_val else USAGES[2]
                lines.append(f"{emotions[r]},{' '.join(map(str, pixels[r].ravel().tolist()))},{usage}\n")
            fh.write("".join(lines))
    tmp.replace(path)
    meta = {
        "params": params,
        "seconds": round(time.perf_counter() - started, 2),
        "bytes": path.stat().st_size,
        "rows": rows,
    }
    marker.write_text(json.dumps(meta))
    return meta


# ---- DISFA ------------------------------------------------------------------------------------
def disfa_frames(
    n: int, size: tuple[int, int], seed: int, face: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """n distinct BGR frames of `size` (width, height): the face photo seen by a camera whose
    pan, zoom, roll and exposure do a smoothed random walk (no two frames alike, no loop),
    with a slow sensor-noise pattern; one frame in memory at a time."""
    face = _face_bgr() if face is None else face
    h0, w0 = face.shape[:2]
    width, height = size
    rng = np.random.default_rng(seed)
    state = np.zeros(5)  # pan x, pan y, log zoom, roll (deg), exposure
    velocity = np.zeros(5)
    scales = np.array([0.0008, 0.0008, 0.0006, 0.02, 0.0008])
    limits = np.array([0.06, 0.04, 0.12, 6.0, 0.15])
    # fixed-pattern sensor noise, split in what it adds and what it takes (saturating uint8 ops)
    grain = rng.integers(-5, 6, (height, width), dtype=np.int16)
    grain = cv2.merge([grain] * 3)
    plus, minus = np.clip(grain, 0, None).astype(np.uint8), np.clip(-grain, 0, None).astype(np.uint8)
    for t in range(n):
        velocity = 0.95 * velocity + rng.normal(0, 1, 5) * scales
        state = np.clip(state + velocity, -limits, limits)
        velocity[np.abs(state) >= limits] *= -1
        zoom = 0.5 * np.exp(state[2])  # share of the photo's height shown
        ch = zoom * h0
        cw = min(ch * width / height, w0)
        cx = (0.4 + state[0]) * w0
        cy = (0.3 + state[1]) * h0
        x0 = float(np.clip(cx - cw / 2, 0, w0 - cw))
        y0 = float(np.clip(cy - ch / 2, 0, h0 - ch))
        rot = cv2.getRotationMatrix2D((width / 2, height / 2), float(state[3]), 1.0)
        m = np.array([[width / cw, 0, -x0 * width / cw], [0, height / ch, -y0 * height / ch], [0, 0, 1]])
        affine = (np.vstack([rot, [0, 0, 1]]) @ m)[:2]
        frame = cv2.warpAffine(
            face, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        frame = cv2.convertScaleAbs(frame, alpha=1.0 + float(state[4]))  # exposure
        if t % 25 == 0:  # the noise pattern drifts slowly
            plus, minus = np.roll(plus, 1, axis=1), np.roll(minus, 1, axis=0)
        yield cv2.subtract(cv2.add(frame, plus), minus)


def _au_intensities(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth integer intensities 0..5 (a smoothed random walk), as ferlab.samples.disfa makes."""
    walk = np.cumsum(rng.normal(size=n + 8))
    smooth = np.convolve(walk, np.ones(9) / 9, mode="valid")[:n]
    span = np.ptp(smooth) or 1.0
    return np.rint(5 * (smooth - smooth.min()) / span).astype(np.int64)


def _write_disfa_subject(root: Path, s: int, frames: int, size: tuple[int, int], seed: int) -> None:
    from ferlab.samples.disfa import disfa_label_path, disfa_video_path, write_avi, write_label_file
    from warehouse.schemas import DISFA_AUS

    subject = f"SN{s + 1:03d}"
    write_avi(disfa_video_path(root, subject, "left"), disfa_frames(frames, size, seed * 1000 + s))
    rng = np.random.default_rng([seed, s, 7])
    for au in DISFA_AUS:
        write_label_file(disfa_label_path(root, subject, au), _au_intensities(frames, rng))


def write_disfa(
    root: str | Path,
    subjects: int,
    frames: int,
    size: tuple[int, int] = (1024, 768),
    seed: int = 0,
    jobs: int = 1,
) -> dict:
    """The DISFA layout for `subjects` subjects (SN001, SN002, ...) of `frames` frames each,
    left camera, + ActionUnit_Labels/<subject>/<subject>_au<k>.txt; subjects written by `jobs`
    processes. Returns .done's JSON."""
    root = Path(root)
    params = {"subjects": subjects, "frames": frames, "size": list(size), "seed": seed}
    if (meta := _cached(root, params)) is not None:
        return meta
    started = time.perf_counter()
    _fresh(root)
    tasks = [(root, s, frames, tuple(size), seed) for s in range(subjects)]
    if jobs > 1 and subjects > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, subjects)) as pool:
            list(pool.map(_write_disfa_subject, *zip(*tasks)))
    else:
        for task in tasks:
            _write_disfa_subject(*task)
    return _finish(root, params, started, frames=subjects * frames)
