"""Scraped images (OAHEGA-style): a drop folder of batches, each batch a folder of images,
directly in it (unlabeled) and/or in one sub-folder per emotion (a weak label).

    ROOT/<batch>/happy/img001.jpg      -> images row + emotion_labels (happy, weak, folder:happy)
    ROOT/<batch>/unlabeled/x.png       -> images row only
    ROOT/<batch>/y.webp                -> images row only

Every file either lands or leaves a `rejects` row with a reason code:
    empty_file, not_an_image, truncated_image, corrupt_image, too_small, decompression_bomb,
    changed_while_reading (stage "decode"), unreadable_file (stage "read"),
    exact_duplicate (stage "dedup").
Perceptual near-duplicates are reported in `near_duplicates`; both images are kept.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from warehouse.hashing import sha256_bytes, sha256_file
from warehouse.rejects import Reject
from warehouse.schemas import EMOTIONS, TABLES
from warehouse.sources.common import IngestReport, progress
from warehouse.store import Warehouse

SOURCE = "scraped"

# Folder names that mean an emotion (matched lower-case); anything else gives no label.
_SYNONYMS = {
    "happiness": "happy",
    "anger": "angry",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    "calm": "neutral",
}
FOLDER_EMOTIONS: dict[str, str] = {**{e: e for e in EMOTIONS}, **_SYNONYMS}

# Extension stored for each Pillow format (MPO is a phone JPEG with extra frames).
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tif", "JPEG2000": "jp2"}
# Magic numbers of common image formats: an unidentifiable file that starts like an image is
# a broken image (corrupt_image), not a file of another kind (not_an_image).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
# The formats a scrape holds. Naming them keeps exotic plugins that other libraries register
# (and that accept almost any header) from claiming a text file is a broken image.
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG2000", "ICO")  # JPEG covers MPO
Image.init()  # register every plugin now: open(formats=...) fails on one not yet imported
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_ORIENTATION = 0x0112
_WRITE_EVERY = 256  # files per write: bounds memory and what a killed run must redo
_PAIR_BLOCK = 1 << 22  # hash comparisons per numpy block (32 MiB of uint64)


class _DecodeError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Decoded:
    media: bytes  # what to store: the file's bytes, or a PNG when EXIF orientation was applied
    ext: str
    width: int
    height: int
    phash: int


@dataclass(frozen=True)
class _File:
    rel: str  # path under the batch folder: the walk order
    path: Path  # resolved: the source_uri
    folder: str | None  # first-level sub-folder (None: directly in the batch folder)
    emotion: str | None


def emotion_for_folder(name: str) -> str | None:
    """The canonical emotion a folder name stands for, or None (e.g. "unlabeled", "ahegao")."""
    return FOLDER_EMOTIONS.get(name.strip().lower())


def find_scraped_batches(root: str | Path) -> list[str]:
    """Names of the batches in a drop folder ROOT/<batch>/...: the non-hidden sub-folders that
    hold at least one non-hidden file (at any depth), sorted. A missing root has no batches."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not _hidden(d.name) and _has_file(d))


def ingest_scraped(
    wh: Warehouse,
    folder: str | Path,
    batch: str | None = None,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    near_duplicate_bits: int = 6,
    show_progress: bool = True,
) -> IngestReport:
    """Ingest one batch folder of scraped images into `wh`; idempotent (a re-run adds nothing).

    Images are identified by the sha256 of their bytes. A later copy of the same bytes (under
    another name or folder, or already stored from another path) is stored once: it is not a
    bad file, but it is recorded as a reject with reason "exact_duplicate" (stage "dedup") so
    that no input file disappears silently; its folder's weak label is still added. Pairs of
    perceptual hashes within `near_duplicate_bits` bits (in this batch, or against scraped
    images already stored) go to `near_duplicates`.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise NotADirectoryError(f"not a batch folder: {folder}")
    batch = batch or folder.name
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone set Pillow's global: truncated files would then decode as half-grey images.
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images pass", stacklevel=2)
    report = IngestReport(source=SOURCE)
    files = _list_files(folder)

    first_uri: dict[str, str] = {}  # sha256 -> source_uri of its first copy in this batch
    bad: dict[str, _DecodeError] = {}  # sha256 -> why its first copy was rejected
    order: list[str] = []  # landed image ids, in walk order (earlier = older)
    phashes: list[int] = []
    images: list[dict] = []
    labels: list[dict] = []
    rejects: list[Reject] = []

    def flush() -> None:
        # Media are already on disk; rows go images -> labels -> rejects, each a whole part.
        report.add("images", wh.append("images", _rows("images", images)))
        report.add("emotion_labels", wh.append("emotion_labels", _rows("emotion_labels", labels)))
        report.add("rejects", wh.add_rejects(rejects))
        report.rejects.extend(rejects)
        images.clear()
        labels.clear()
        rejects.clear()

    for k, f in enumerate(progress(files, total=len(files), desc=f"scraped {batch}", enabled=show_progress)):
        uri = str(f.path)
        try:
            # Hashed in a stream, not read whole: a drop folder may hold a 4 GB video.
            digest = sha256_file(f.path) if f.path.stat().st_size else ""
        except OSError as exc:
            rejects.append(_reject(uri, "read", "unreadable_file", str(exc)))
            continue
        if digest in first_uri:
            earlier = bad.get(digest)
            if earlier is not None:  # the same broken bytes again: the same verdict
                rejects.append(_reject(uri, "decode", earlier.reason, f"same bytes as {first_uri[digest]}"))
            else:
                rejects.append(_reject(uri, "dedup", "exact_duplicate", f"same bytes as {first_uri[digest]}"))
                if f.emotion:
                    labels.append(_label(digest, f))
        else:
            try:
                dec = _decode(f.path, digest, min_side, max_pixels)
            except _DecodeError as exc:
                rejects.append(_reject(uri, "decode", exc.reason, exc.detail))
                if digest:
                    first_uri[digest], bad[digest] = uri, exc
            else:
                first_uri[digest] = uri
                order.append(digest)
                phashes.append(dec.phash)
                images.append(
                    {
                        "image_id": digest,
                        "source": SOURCE,
                        "source_uri": uri,
                        "subject": None,
                        "video_id": None,
                        "frame_index": None,
                        "split": None,
                        "batch": batch,
                        "width": dec.width,
                        "height": dec.height,
                        "media_path": wh.put_media(dec.media, dec.ext),
                        "phash": dec.phash,
                    }
                )
                if f.emotion:
                    labels.append(_label(digest, f))
        if (k + 1) % _WRITE_EVERY == 0:
            flush()
    flush()

    # Images of this batch already stored from another path (an earlier batch): say so.
    stored = _stored_uris(wh, order)
    elsewhere = {i for i in order if stored.get(i, first_uri[i]) != first_uri[i]}
    repeats = [
        _reject(first_uri[i], "dedup", "exact_duplicate", f"same bytes as {stored[i]}")
        for i in order
        if i in elsewhere
    ]
    report.add("rejects", wh.add_rejects(repeats))
    report.rejects.extend(repeats)

    # Oldest first: the images stored before from elsewhere, then this batch's in walk order
    # (a stable sort), so a near-duplicate pair names the newer image first.
    by_age = sorted(range(len(order)), key=lambda n: order[n] not in elsewhere)
    ids = [order[n] for n in by_age]
    hashes = np.array([phashes[n] for n in by_age], dtype=np.uint64)
    pairs = _near_duplicate_pairs(wh, ids, hashes, near_duplicate_bits)
    report.add("near_duplicates", wh.append("near_duplicates", pairs))

    report.images_found = len(order)
    report.image_ids = list(order)
    return report


# ---- files ------------------------------------------------------------------------------
def _hidden(name: str) -> bool:
    return name.startswith(".")


def _has_file(folder: Path) -> bool:
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        if any(not _hidden(f) for f in files):
            return True
    return False


def _list_files(folder: Path) -> list[_File]:
    """Every non-hidden file under the batch folder, in a stable order (sorted relative path);
    the label comes from the first-level sub-folder, however deep the file is."""
    out: list[_File] = []
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        rel = Path(dirpath).relative_to(folder)
        top = rel.parts[0] if rel.parts else None
        emotion = emotion_for_folder(top) if top else None
        for name in names:
            path = Path(dirpath) / name
            if not _hidden(name) and path.is_file():
                out.append(_File((rel / name).as_posix(), path.resolve(), top, emotion))
    out.sort(key=lambda f: f.rel)
    return out


# ---- decoding ---------------------------------------------------------------------------
def _pillow_open(fh: BinaryIO) -> Image.Image:
    """Pillow's own Image.open. Importing ultralytics replaces it process-wide with a wrapper
    that, on an unidentified file, tries to install pi-heif from the network: here that turns
    "not an image" into an install error, so the original is used when it was replaced."""
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", Image.open)
    return opener(fh, formats=_FORMATS)


def _decode(path: Path, digest: str, min_side: int, max_pixels: int) -> _Decoded:
    """Validate and decode one file (sha256 `digest`, "" when empty); raise
    _DecodeError(reason, detail) when it is bad."""
    if not digest:
        raise _DecodeError("empty_file", "0 bytes")
    with open(path, "rb") as fh, warnings.catch_warnings():
        # Our own max_pixels decides; Pillow's warning (above its MAX_IMAGE_PIXELS) is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        head = fh.read(16)
        fh.seek(0)
        try:
            im = _pillow_open(fh)  # reads the header only
        except Image.DecompressionBombError as exc:
            raise _DecodeError("decompression_bomb", str(exc)) from None
        except UnidentifiedImageError:
            if head.startswith(_MAGIC) or head[8:12] == b"WEBP":
                raise _DecodeError("corrupt_image", "image signature but unreadable header") from None
            raise _DecodeError("not_an_image", f"not a known image format (starts {head[:8]!r})") from None
        except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error, ...
            raise _error_for(exc) from None
        width, height = im.size
        # Checked from the header, before a single pixel is decoded.
        if width * height > max_pixels:
            raise _DecodeError("decompression_bomb", f"{width}x{height} > max_pixels {max_pixels}")
        if min(width, height) < min_side:
            raise _DecodeError("too_small", f"{width}x{height} < min_side {min_side}")
        try:
            im.load()  # Pillow decodes lazily: force it, so truncation shows here
        except Exception as exc:
            raise _error_for(exc) from None
        try:
            orientation = int(im.getexif().get(_ORIENTATION, 1))
        except Exception:  # unreadable EXIF: the pixels are fine, keep them as stored
            orientation = 1
        fh.seek(0)
        data = fh.read()  # bounded now: a decodable image of at most max_pixels
    if sha256_bytes(data) != digest:  # a scraper still writing it: the next run takes it
        raise _DecodeError("changed_while_reading", "the file changed while it was ingested")
    fmt = im.format or "PNG"
    if orientation in range(2, 9):
        im = ImageOps.exif_transpose(im)
        if im.mode not in _PNG_MODES:
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        buf = io.BytesIO()
        im.save(buf, "PNG")
        media, ext = buf.getvalue(), "png"
    else:
        media, ext = data, _EXT.get(fmt, fmt.lower())
    return _Decoded(media, ext, im.width, im.height, phash64(im))


def _error_for(exc: Exception) -> _DecodeError:
    text = f"{type(exc).__name__}: {exc}"
    if "truncat" in str(exc).lower() or isinstance(exc, EOFError):
        return _DecodeError("truncated_image", text)
    if isinstance(exc, Image.DecompressionBombError):
        return _DecodeError("decompression_bomb", text)
    return _DecodeError("corrupt_image", text)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def phash64(im: Image.Image) -> int:
    """64-bit perceptual hash (pHash): 8x8 lowest DCT frequencies of the 32x32 grayscale image,
    one bit each for above/below their median. Robust to re-encoding, resizing, brightness."""
    gray = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)
    coeffs = _DCT32 @ np.asarray(gray, dtype=np.float64) @ _DCT32.T
    low = coeffs[:8, :8].ravel()
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


# ---- near duplicates --------------------------------------------------------------------
def hamming_pairs(
    a: np.ndarray, b: np.ndarray, max_bits: int, upper: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i into a, j into b, distance) of uint64 hashes within max_bits bits.
    With upper=True (a is b), only j < i: each pair once, j the earlier one."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    out_i, out_j, out_d = [], [], []
    if len(a) and len(b):
        rows = max(1, _PAIR_BLOCK // len(b))  # bounded memory however big the warehouse is
        for start in range(0, len(a), rows):
            dist = np.bitwise_count(a[start : start + rows, None] ^ b[None, :])
            hit = dist <= max_bits
            if upper:
                hit &= np.arange(len(b))[None, :] < np.arange(start, start + len(dist))[:, None]
            i, j = np.nonzero(hit)
            out_i.append(i + start)
            out_j.append(j)
            out_d.append(dist[i, j])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _near_duplicate_pairs(wh: Warehouse, ids: list[str], hashes: np.ndarray, max_bits: int) -> pa.Table:
    """near_duplicates rows for this batch's images (ids oldest first): among themselves and
    against scraped images already stored. A pair already stored the other way round (the
    other image arrived first) is not added again."""
    with wh.connect() as con:
        con.register("batch_ids", pa.table({"image_id": pa.array(ids, pa.string())}))
        old = con.sql(
            "SELECT image_id, phash FROM images WHERE source = 'scraped' AND phash IS NOT NULL "
            "AND image_id NOT IN (SELECT image_id FROM batch_ids)"
        ).to_arrow_table()
        known = con.sql(
            "SELECT image_id, duplicate_of FROM near_duplicates WHERE image_id IN "
            "(SELECT image_id FROM batch_ids) OR duplicate_of IN (SELECT image_id FROM batch_ids)"
        ).fetchall()
    old_ids = old.column("image_id").to_pylist()
    old_hashes = old.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)
    rows: list[tuple[str, str, int]] = []
    i, j, d = hamming_pairs(hashes, hashes, max_bits, upper=True)
    rows += [(ids[a], ids[b], int(x)) for a, b, x in zip(i, j, d)]
    i, j, d = hamming_pairs(hashes, old_hashes, max_bits)
    rows += [(ids[a], old_ids[b], int(x)) for a, b, x in zip(i, j, d)]
    reverse = {(dup, img) for img, dup in known}
    rows = sorted(r for r in rows if r[0] != r[1] and (r[0], r[1]) not in reverse)
    return pa.table(
        {
            "image_id": [r[0] for r in rows],
            "duplicate_of": [r[1] for r in rows],
            "distance": pa.array([r[2] for r in rows], pa.int16()),
        }
    )


def _stored_uris(wh: Warehouse, ids: list[str]) -> dict[str, str]:
    """source_uri of the stored row of each of these image ids."""
    if not ids:
        return {}
    with wh.connect() as con:
        con.register("batch_ids", pa.table({"image_id": pa.array(ids, pa.string())}))
        got = con.sql(
            "SELECT image_id, any_value(source_uri) FROM images WHERE image_id IN "
            "(SELECT image_id FROM batch_ids) GROUP BY image_id"
        ).fetchall()
    return dict(got)


# ---- rows -------------------------------------------------------------------------------
def _reject(uri: str, stage: str, reason: str, detail: str) -> Reject:
    return Reject(source=SOURCE, source_uri=uri, stage=stage, reason=reason, detail=detail)


def _label(image_id: str, f: _File) -> dict:
    return {
        "image_id": image_id,
        "emotion": f.emotion,
        "label_source": "weak",
        "confidence": None,
        "annotator": f"folder:{f.folder}",
    }


def _rows(table: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[table].schema)
