"""Face crops of a dataset version as training tensors.

    faces = load_faces(root, manifest, AUTask(), image_size=224, channels=3)
    folds = group_kfold(faces.groups, k=3)               # subject-exclusive
    for x_uint8, targets in iterate_batches(faces, idx, 64, device, shuffle=True):
        x = Augment()(normalize(x_uint8, config), targets, generator)

The decoded crops live in one uint8 array (N, C, H, W). For a data set that does not fit in
memory it is a numpy memmap in `<data root>/cache/`, written once per (version, task, size)
and shared by every fold, loss and epoch: decoding JPEGs every epoch would make the loader
the bottleneck on CPU. Augmentation runs on whole normalised batches on the training device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from models.tasks import Task
from warehouse.atomic import atomic_path


@dataclass
class Faces:
    """Decoded crops + labels. `targets` is (N, K) float {0,1} for AUs, (N,) int64 class
    indices for emotions; `groups` are the people (or batches) that must not straddle folds."""

    task: str
    labels: list[str]
    images: np.ndarray  # (N, C, H, W) uint8, possibly a memmap
    targets: np.ndarray
    groups: np.ndarray  # (N,) str
    splits: np.ndarray  # (N,) str: train | val | test
    crop_ids: list[str]

    def __len__(self) -> int:
        return len(self.crop_ids)


def decode_crop(path: Path, size: int, channels: int) -> np.ndarray:
    """One crop file as the (C, S, S) uint8 array training sees: gray (1 channel) or RGB, resized
    to `size` (area when shrinking). The one decoder of training and inference (models.predict).

    Raises:
        OSError: the file is missing or not a readable image.
    """
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise OSError(f"cannot read crop {path} (missing or corrupt media file)")
    return prepare_crop(img, size, channels, bgr=True)


def prepare_crop(img: np.ndarray, size: int, channels: int, bgr: bool = False) -> np.ndarray:
    """A crop in memory (H, W) gray or (H, W, 3) uint8, RGB (BGR with `bgr`, as OpenCV reads
    files) -> the (C, S, S) uint8 array training sees: resized to `size` (area when shrinking),
    gray for a 1-channel model (BT.601, as OpenCV reads a gray file), else RGB. What decode_crop
    does after reading the file, so in-memory crops (labeling.analysis.analyze) score as stored ones."""
    if img.ndim == 3 and channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    elif img.ndim == 2 and channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        bgr = False
    if img.shape[0] != size or img.shape[1] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    if channels == 1:
        return img[None]
    if bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _cache_name(crop_ids: Sequence[str], image_size: int, channels: int) -> str:
    digest = hashlib.sha256("\n".join(crop_ids).encode()).hexdigest()[:16]
    return f"crops-{digest}-{channels}x{image_size}.u8"


def decode_crops(
    root: Path,
    paths: Sequence[str],
    crop_ids: Sequence[str],
    image_size: int,
    channels: int,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Every crop decoded once into (N, C, S, S) uint8 (threads: OpenCV releases the GIL).
    With `cache_dir`, the array is a memmap kept there, keyed by the crop ids and the size."""
    shape = (len(paths), channels, image_size, image_size)
    cache = cache_dir / _cache_name(crop_ids, image_size, channels) if cache_dir else None
    if cache is not None and cache.is_file() and cache.stat().st_size == int(np.prod(shape)):
        return np.memmap(cache, dtype=np.uint8, mode="r", shape=shape)
    out = np.empty(shape, dtype=np.uint8)
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        for i, img in enumerate(pool.map(lambda p: decode_crop(root / p, image_size, channels), paths)):
            out[i] = img
    if cache is None:
        return out
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        out.tofile(tmp)
    return np.memmap(cache, dtype=np.uint8, mode="r", shape=shape)


def load_faces(
    root: Path,
    manifest: pa.Table,
    task: Task,
    image_size: int,
    channels: int = 3,
    cache: bool = True,
) -> Faces:
    """The task's labelled crops of a manifest (see warehouse.versions), decoded at
    `image_size`: RGB from the 224 px crops, or gray from the 48 px ones when channels == 1.

    Raises:
        ValueError: no crop of the manifest carries the task's labels.
        OSError: a crop file is missing or unreadable.
    """
    rows = task.select_rows(manifest)
    if rows.num_rows == 0:
        raise ValueError(f"the dataset version has no crops labelled for the {task.name} task")
    crop_ids = rows["crop_id"].to_pylist()
    column = "gray_media_path" if channels == 1 else "media_path"
    images = decode_crops(
        root, rows[column].to_pylist(), crop_ids, image_size, channels, root / "cache" if cache else None
    )
    return Faces(
        task=task.name,
        labels=task.labels,
        images=images,
        targets=task.targets(rows),
        groups=np.array(rows["group"].to_pylist(), dtype=object).astype(str),
        splits=np.array(rows["split"].to_pylist(), dtype=object).astype(str),
        crop_ids=crop_ids,
    )


# ---- splits ---------------------------------------------------------------------------------
def _group_rank(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()


def group_kfold(groups: np.ndarray, k: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-exclusive k folds: (train, test) index arrays; every group is tested exactly
    once. Groups go, largest first, to the fold with the fewest samples (ties by a hash of
    the name, so the assignment is deterministic and does not depend on row order)."""
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < k:
        raise ValueError(
            f"{k}-fold cross-validation needs at least {k} groups (subjects); found {len(names)}"
        )
    order = sorted(range(len(names)), key=lambda i: (-counts[i], _group_rank(str(names[i]))))
    load = np.zeros(k, dtype=np.int64)
    fold_of: dict[str, int] = {}
    for i in order:
        f = int(np.argmin(load))
        fold_of[str(names[i])] = f
        load[f] += counts[i]
    fold = np.array([fold_of[str(g)] for g in groups])
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def validation_split(
    groups: np.ndarray, train_idx: np.ndarray, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Split training indices into (train, val) for early stopping and threshold choice.
    Group-exclusive when there are >= 3 training groups (a held-out person, like the test);
    with fewer, a random `fraction` of the samples (said in the returned description)."""
    train_groups = np.unique(groups[train_idx])
    if len(train_groups) >= 3:
        ranked = sorted(train_groups, key=lambda g: _group_rank(f"val:{seed}:{g}"))
        n_val = max(1, round(len(ranked) * fraction))
        val_groups = set(ranked[:n_val])
        is_val = np.array([g in val_groups for g in groups[train_idx]])
        how = "held-out groups " + ", ".join(sorted(str(g) for g in val_groups))
    else:
        rng = np.random.default_rng(seed)
        is_val = rng.random(len(train_idx)) < fraction
        how = f"random {fraction:.0%} of training samples (only {len(train_groups)} training groups)"
    return train_idx[~is_val], train_idx[is_val], how


# ---- batches and augmentation ---------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Batch augmentation on the device: horizontal flip (seed 004), zoom-out (seed 004: the
    face shrinks inside the frame, padded with the edge colour), the seed-002 half-face
    join (the left half of one face with the right half of another with the same labels) and,
    when `degrade` > 0, degraded faces: the look of sources the model never trains on (FER-2013's
    48 px gray crops, small faces of scraped photos) made from the training frames: grayscale
    and zoomed in up to `max_zoom_in` (half of them: FER-2013's crops are gray and tight),
    down-scaled to `degrade_px` and back up (three quarters; one size per batch)
    and brightness/contrast jitter (all). `mean`/`std`: the normalisation of x (undone for the
    pixel operations, then redone); None: x is pixels / 255."""

    flip: float = 0.5
    zoom_out: float = 0.3  # share of the batch zoomed out
    min_scale: float = 0.75
    half_join: float = 0.2  # share of the batch replaced by joined halves
    degrade: float = 0.0  # share of the batch degraded (after the rest)
    degrade_px: tuple[int, int] = (40, 64)  # the low resolution's range, px (inclusive)
    max_zoom_in: float = 1.4  # degraded: a tighter crop, the face up to this much larger
    brightness: float = 0.15  # degraded: offset in [-b, b] of the 0..1 pixel range
    contrast: float = 0.3  # degraded: contrast factor in [1 - c, 1 + c]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: a normalised float batch (N, C, H, W), changed in place; y: its targets (for the
        half-face join)."""
        n, _, h, w = x.shape
        dev = x.device
        rand = torch.rand(n, 3, generator=gen).to(dev)
        flip = rand[:, 0] < self.flip
        if flip.any():  # only the chosen samples are copied
            x[flip] = x[flip].flip(3)
        zoom = rand[:, 1] < self.zoom_out
        if zoom.any():
            scale = self.min_scale + (1 - self.min_scale) * torch.rand(int(zoom.sum()), generator=gen).to(dev)
            theta = torch.zeros(len(scale), 2, 3, device=dev, dtype=x.dtype)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale  # sample a larger window: the face shrinks
            grid = F.affine_grid(theta, [len(scale), x.shape[1], h, w], align_corners=False)
            x[zoom] = F.grid_sample(x[zoom], grid, padding_mode="border", align_corners=False)
        join = rand[:, 2] < self.half_join
        if join.any():
            partner = same_label_partner(y, gen)
            half = w // 2
            x[join, :, :, half:] = x[partner[join], :, :, half:]
        if self.degrade > 0:  # drawn only then: without it, the random stream is the one before
            pick = (torch.rand(n, generator=gen) < self.degrade).to(dev)
            if pick.any():
                x[pick] = self.degraded(x[pick], gen)
        return x

    def degraded(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x (normalised, (M, C, H, W)) as gray / low-resolution / differently lit faces (a new tensor)."""
        m, c, h, w = x.shape
        dev, dtype = x.device, x.dtype
        shape = (1, c, 1, 1)
        mean = torch.tensor(self.mean, device=dev, dtype=dtype).view(shape) if self.mean else None
        std = torch.tensor(self.std, device=dev, dtype=dtype).view(shape) if self.std else None
        px = x * std + mean if mean is not None else x.clone()  # 0..1 pixels
        rand = torch.rand(m, 4, generator=gen).to(dev)
        gray = rand[:, 0] < 0.5
        if c == 3 and gray.any():
            luma = torch.tensor((0.299, 0.587, 0.114), device=dev, dtype=dtype).view(1, 3, 1, 1)
            px[gray] = (px[gray] * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        tight = gray  # cropped tighter too, as FER-2013's gray crops are
        if tight.any() and self.max_zoom_in > 1:
            k = int(tight.sum())
            scale = 1 + (self.max_zoom_in - 1) * torch.rand(k, generator=gen).to(dev)
            theta = torch.zeros(k, 2, 3, device=dev, dtype=dtype)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale  # a smaller window: the face grows
            grid = F.affine_grid(theta, [k, c, h, w], align_corners=False)
            px[tight] = F.grid_sample(px[tight], grid, padding_mode="border", align_corners=False)
        low = rand[:, 1] < 0.75
        lo, hi = self.degrade_px
        size = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        if low.any() and size < min(h, w):
            small = F.interpolate(px[low], size=(size, size), mode="area")
            px[low] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        gain = (1 + self.contrast * (2 * rand[:, 2] - 1)).view(m, 1, 1, 1)
        offset = (self.brightness * (2 * rand[:, 3] - 1)).view(m, 1, 1, 1)
        centre = px.mean(dim=(1, 2, 3), keepdim=True)
        px = ((px - centre) * gain + centre + offset).clamp_(0, 1)
        return (px - mean) / std if mean is not None else px


def same_label_partner(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each sample, a random other sample of the batch with identical labels (itself when
    it has no twin): the joined face then keeps a true label."""
    keys = y.reshape(len(y), -1).to(torch.float32)
    same = (keys[:, None, :] == keys[None, :, :]).all(-1)
    same.fill_diagonal_(False)
    noise = torch.rand(same.shape, generator=gen).to(y.device)
    score = torch.where(same, noise, torch.full_like(noise, -1.0))
    best = score.argmax(1)
    has_twin = same.any(1)
    return torch.where(has_twin, best, torch.arange(len(y), device=y.device))


def iterate_batches(
    faces: Faces,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, targets) batches on `device` (pinned host memory, non-blocking copies
    on CUDA); shuffled per `seed` when asked."""
    gen = torch.Generator().manual_seed(seed)
    order = indices[torch.randperm(len(indices), generator=gen).numpy()] if shuffle else indices
    pin = device.type == "cuda"
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted reads: sequential on a memmap
        x = torch.from_numpy(np.ascontiguousarray(faces.images[idx]))
        y = torch.from_numpy(faces.targets[idx])
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
