"""Scraped images (OAHEGA-style): a drop folder of batches, each batch a folder of images,
directly in it (unlabeled) and/or in one sub-folder per emotion (a weak label).

    ROOT/<batch>/happy/img001.jpg      -> images row + emotion_labels (happy, weak, folder:happy)
    ROOT/<batch>/unlabeled/x.png       -> images row only
    ROOT/<batch>/y.webp                -> images row only

Every entry of the batch folder (hidden names aside) either lands or leaves a `rejects` row
with a reason code:
    stage "read":   outside_batch, broken_link, link_loop, not_a_regular_file, unreadable_file,
                    unreadable_folder, changed_while_reading
    stage "decode": empty_file, not_an_image, unsupported_format, truncated_image, corrupt_image,
                    too_small, decompression_bomb, changed_while_reading
    stage "dedup":  exact_duplicate
Perceptual near-duplicates are reported in `near_duplicates`; both images are kept.

Symbolic links. Only what lies inside the batch folder is read, and no link is followed
without a row saying so:
- a link (to a file or a folder, at any depth) whose resolved path is inside the batch folder
  is followed. A file reached through one is stored under its real path (the source_uri names
  the file its bytes came from); its label comes from the emotion folder it was found in, so a
  linked emotion folder labels the files it leads to. Files that are not links are read first,
  so a link to a file that is also in the batch becomes an exact_duplicate reject named by the
  link (its detail says where the link leads), and the link's label is added;
- a link whose resolved path leads outside the batch folder is one `outside_batch` reject named
  by the link; nothing it leads to is opened or listed (resolving the path looks at the links on
  the way, never at a file's content), and a linked folder gives one reject for the folder, not
  one per file. Its detail quotes the link's own text, never anything read outside;
- a link that leads nowhere (missing target, a loop of links) is `broken_link`; a link to a
  folder that contains it (a loop of folders) is `link_loop`, its files being read where they are.
A named pipe, socket or device is `not_a_regular_file` and is never opened (a FIFO would block).
Files are opened without following a last link and checked to be the regular file that was
listed, so an entry swapped for a link after the listing is refused before a byte is read.

File names. A name that is not valid UTF-8 does not stop the batch: the file is ingested, and
every text stored about it (source_uri, the batch and annotator names, reject details) shows
the undecodable bytes as backslash escapes, `os.fsencode(name).decode("utf-8",
"backslashreplace")`: the name b"caf\\xe9.jpg" is stored as the text "caf\\\\xe9.jpg" (Python
literals). Anything else that goes wrong with one file is that file's reject; only the
warehouse failing stops the run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from warehouse.errors import InputError
from warehouse.hamming import HammingIndex
from warehouse.hashing import sha256_bytes
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
# Phone photos in HEIF containers (an ISO-BMFF file: its first box is `ftyp` with brand codes):
# real images in a format not ingested here, told apart from "not an image" by their brands.
_ISO_IMAGE_BRANDS = {
    **dict.fromkeys((b"avif", b"avis"), "AVIF"),
    **dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"), "HEIC"),
    **dict.fromkeys((b"mif1", b"mif2", b"msf1"), "HEIF"),
}
_HEAD = 256  # bytes read to tell a file's kind: the magic numbers, an ftyp box's brand list
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_ORIENTATION = 0x0112
_WRITE_EVERY = 256  # files per write: bounds memory and what a killed run must redo
_STORED_BLOCK = 1 << 17  # stored hashes read at a time when looking for near duplicates
_CHUNK = 1 << 20  # bytes per read when hashing a file
# Opening a listed file: never through a link at the last step, never blocking on a FIFO.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_SPECIAL = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class _Rejected(Exception):
    """One file's problem: it becomes that file's reject row, and the batch goes on."""

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(stage, reason, detail)
        self.stage = stage
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
    rel: str  # path under the batch folder as listed (links not resolved): the walk order
    listed: str  # that path in full: what a reject about the file names
    path: str  # the real path (every link resolved, inside the batch): what is opened and stored
    ident: tuple[int, int]  # (st_dev, st_ino) when listed: what is opened must be this file
    folder: str | None  # first-level sub-folder as listed (None: directly in the batch folder)
    emotion: str | None
    linked: bool  # reached through a symbolic link (its own, or a folder's above it)


def emotion_for_folder(name: str) -> str | None:
    """The canonical emotion a folder name stands for, or None (e.g. "unlabeled", "ahegao")."""
    return FOLDER_EMOTIONS.get(name.strip().lower())


def find_scraped_batches(root: str | Path) -> list[str]:
    """Names of the batches in a drop folder ROOT/<batch>/...: the non-hidden sub-folders that
    hold at least one non-hidden entry other than a folder (a file, a link, a pipe: each gives
    an images or a rejects row), at any depth, sorted. A missing root has no batches."""
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
    images already stored) go to `near_duplicates`. Links, special files and file names are
    handled as the module docstring says.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise InputError(
            f"scraped batch {_text(str(folder))} is not a folder: give the folder that holds the "
            "batch's images (directly or in one sub-folder per emotion)"
        )
    batch = _text(batch or folder.name)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone set Pillow's global: truncated files would then decode as half-grey images.
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images pass", stacklevel=2)
    report = IngestReport(source=SOURCE)
    files, rejects = _walk(folder)

    first_uri: dict[str, str] = {}  # sha256 -> source_uri of its first copy in this batch
    bad: dict[str, _Rejected] = {}  # sha256 -> why its first copy was rejected
    order: list[str] = []  # landed image ids, in walk order (earlier = older)
    phashes: list[int] = []
    images: list[dict] = []
    labels: list[dict] = []

    def flush() -> None:
        # Media are already on disk; rows go images -> labels -> rejects, each a whole part.
        report.add("images", wh.append("images", _rows("images", images)))
        report.count_labels(
            "emotion_labels", wh.append_labels("emotion_labels", _rows("emotion_labels", labels))
        )
        report.add("rejects", wh.add_rejects(rejects))
        report.rejects.extend(rejects)
        images.clear()
        labels.clear()
        rejects.clear()

    def read(f: _File, uri: str) -> tuple[str, _Decoded | None]:
        """(sha256, decoded image), or (sha256, None) for bytes already seen in this batch;
        raises _Rejected or OSError for a bad file."""
        with _open_listed(f) as fh:
            # Hashed in a stream, not read whole: a drop folder may hold a 4 GB video.
            digest = _sha256_stream(fh) if os.fstat(fh.fileno()).st_size else ""
            if digest in first_uri:
                earlier = bad.get(digest)
                if earlier is not None:  # the same broken bytes again: the same verdict
                    raise _Rejected("decode", earlier.reason, f"same bytes as {first_uri[digest]}")
                return digest, None
            try:
                return digest, _decode(fh, digest, min_side, max_pixels)
            except _Rejected as exc:
                if digest:
                    first_uri[digest], bad[digest] = uri, exc
                raise

    for k, f in enumerate(progress(files, total=len(files), desc=f"scraped {batch}", enabled=show_progress)):
        uri = _text(f.path)
        # A file reached through a link: its reject (named by the listed path) says where it leads.
        via = f"; through a symbolic link: the file is {uri}" if f.linked else ""
        try:
            digest, dec = read(f, uri)
        except _Rejected as exc:
            rejects.append(_reject(f.listed, exc.stage, exc.reason, exc.detail + via))
        except OSError as exc:
            rejects.append(_reject(f.listed, "read", "unreadable_file", f"{exc}{via}"))
        else:
            if dec is None:
                rejects.append(
                    _reject(f.listed, "dedup", "exact_duplicate", f"same bytes as {first_uri[digest]}{via}")
                )
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


def _text(s: str) -> str:
    """A path or message as stored text: the bytes of a name that is not UTF-8 (which Python
    holds as lone surrogates, and Parquet cannot store) shown as backslash escapes."""
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that no file name makes (from some library's message)
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _has_file(folder: Path) -> bool:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        # os.walk lists a link to a folder among the folders, and does not enter it
        if any(not _hidden(f) for f in files) or any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return True
    return False


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(folder: Path) -> tuple[list[_File], list[Reject]]:
    """The files under the batch folder to read, and the rejects of the entries that are not
    read (links leading outside or nowhere, pipes, unlistable folders), as the module docstring
    says. Files that are not links come first, each group in a stable order (sorted listed
    path); a file's label comes from the first-level sub-folder, however deep the file is.

    Nothing outside the batch folder is opened or listed: a link's resolved path is checked
    before what it leads to is looked at. A loop of folders is cut where a link leads back to
    a folder above it."""
    root = str(folder)
    files: list[_File] = []
    rejects: list[Reject] = []
    # (real folder, its listed path, its parts under the batch, the real folders above it
    # and itself, whether reached through a link); an explicit stack: any depth works
    stack: list[tuple[str, str, tuple[str, ...], frozenset[str], bool]] = [
        (root, root, (), frozenset({root}), False)
    ]
    while stack:
        real_dir, listed_dir, parts, above, linked = stack.pop()
        try:
            with os.scandir(real_dir) as entries:
                names = sorted(e.name for e in entries if not _hidden(e.name))
        except OSError as exc:
            detail = f"the folder cannot be listed ({exc.strerror or exc}): check its permissions"
            rejects.append(_reject(listed_dir, "read", "unreadable_folder", detail))
            continue
        for name in names:
            listed, real, via = os.path.join(listed_dir, name), os.path.join(real_dir, name), linked
            text = ""  # a link's own text
            try:
                st = os.lstat(real)
                if stat.S_ISLNK(st.st_mode):
                    text = os.readlink(real)  # the link's own text: part of the batch
                    target = os.path.realpath(real)  # resolves what exists, touches no target content
                    if not _inside(target, root):
                        detail = (
                            f"a symbolic link to {text!r}, which leads outside the batch folder: "
                            "not followed; copy what it points to into the batch to ingest it"
                        )
                        rejects.append(_reject(listed, "read", "outside_batch", detail))
                        continue
                    try:
                        st = os.lstat(target)
                    except FileNotFoundError:
                        st = None
                    if st is None or stat.S_ISLNK(st.st_mode):  # missing, or a loop of links
                        what = "which does not exist" if st is None else "in a loop of links"
                        detail = (
                            f"a symbolic link to {text!r}, {what}: nothing to read; fix or remove the link"
                        )
                        rejects.append(_reject(listed, "read", "broken_link", detail))
                        continue
                    real, via = target, True
            except OSError as exc:  # vanished since listed, or a folder on the way not searchable
                rejects.append(_reject(listed, "read", "unreadable_file", str(exc)))
                continue
            sub = (*parts, name)
            if stat.S_ISDIR(st.st_mode):
                if real in above:
                    detail = (
                        f"a symbolic link to {text!r}, a folder that contains it: not followed "
                        "(its files are read where they are)"
                    )
                    rejects.append(_reject(listed, "read", "link_loop", detail))
                else:
                    stack.append((real, listed, sub, above | {real}, via))
            elif stat.S_ISREG(st.st_mode):
                top = sub[0] if len(sub) > 1 else None
                emotion = emotion_for_folder(top) if top else None
                files.append(_File("/".join(sub), listed, real, (st.st_dev, st.st_ino), top, emotion, via))
            else:
                kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
                detail = f"{kind}, not a regular file: not opened"
                rejects.append(_reject(listed, "read", "not_a_regular_file", detail))
    files.sort(key=lambda f: (f.linked, f.rel))
    rejects.sort(key=lambda r: r.source_uri)
    return files, rejects


def _open_listed(f: _File) -> BinaryIO:
    """Open the file the walk listed and nothing else: no link followed at the last step, no
    wait on a pipe, and the same regular file (device and inode) as when listed, so an entry
    replaced since (by a link out of the batch, a pipe) is refused before a byte is read."""
    try:
        fd = os.open(f.path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise _Rejected(
                "read", "changed_while_reading", "replaced by a symbolic link since listed: not read"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
            raise _Rejected("read", "not_a_regular_file", f"{kind}, not a regular file: not read")
        if (st.st_dev, st.st_ino) != f.ident:
            raise _Rejected(
                "read", "changed_while_reading", "replaced by another file since listed: not read"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _sha256_stream(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := fh.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()


# ---- decoding ---------------------------------------------------------------------------
def _pillow_open(fh: BinaryIO) -> Image.Image:
    """Pillow's own Image.open. Importing ultralytics replaces it process-wide with a wrapper
    that, on an unidentified file, tries to install pi-heif from the network: here that turns
    "not an image" into an install error, so the original is used when it was replaced."""
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", Image.open)
    return opener(fh, formats=_FORMATS)


def _iso_image_format(head: bytes) -> str | None:
    """ "AVIF", "HEIC" or "HEIF" when the file starts with an ISO-BMFF `ftyp` box naming one of
    their brands (major or compatible), else None (an MP4 video has other brands)."""
    if head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    end = size if 16 <= size <= len(head) else len(head)  # 0: to the end; 1: a 64-bit size
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    found = {_ISO_IMAGE_BRANDS.get(b) for b in brands}
    # an AVIF also names the generic HEIF brand (mif1), an iPhone HEIC often has mif1 as major
    return next((name for name in ("AVIF", "HEIC", "HEIF") if name in found), None)


def _decode(fh: BinaryIO, digest: str, min_side: int, max_pixels: int) -> _Decoded:
    """Validate and decode one open file (sha256 `digest`, "" when empty); raise
    _Rejected(stage "decode") when it is bad. Only a failing read raises anything else."""
    if not digest:
        raise _Rejected("decode", "empty_file", "0 bytes")
    fh.seek(0)
    head = fh.read(_HEAD)
    iso = _iso_image_format(head)
    if iso is not None:
        detail = (
            f"{iso} image: a format not ingested here; convert it to JPEG or PNG (e.g. with "
            "libheif's heif-convert, or ImageMagick) and add the copy to a batch"
        )
        raise _Rejected("decode", "unsupported_format", detail)
    fh.seek(0)
    with warnings.catch_warnings():
        # Our own max_pixels decides; Pillow's warning (above its MAX_IMAGE_PIXELS) is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = _pillow_open(fh)  # reads the header only
        except Image.DecompressionBombError as exc:
            raise _Rejected("decode", "decompression_bomb", str(exc)) from None
        except UnidentifiedImageError:
            if head.startswith(_MAGIC) or head[8:12] == b"WEBP":
                raise _Rejected("decode", "corrupt_image", "image signature but unreadable header") from None
            raise _Rejected(
                "decode", "not_an_image", f"not a known image format (starts {head[:8]!r})"
            ) from None
        except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error, ...
            raise _error_for(exc) from None
        width, height = im.size
        # Checked from the header, before a single pixel is decoded.
        if width * height > max_pixels:
            raise _Rejected("decode", "decompression_bomb", f"{width}x{height} > max_pixels {max_pixels}")
        if min(width, height) < min_side:
            raise _Rejected("decode", "too_small", f"{width}x{height} < min_side {min_side}")
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
        raise _Rejected("decode", "changed_while_reading", "the file changed while it was ingested")
    try:  # what an odd mode or EXIF makes fail here is this image's fault, not the batch's
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
    except Exception as exc:
        raise _error_for(exc) from None


def _error_for(exc: Exception) -> _Rejected:
    text = f"{type(exc).__name__}: {exc}"
    if "truncat" in str(exc).lower() or isinstance(exc, EOFError):
        return _Rejected("decode", "truncated_image", text)
    if isinstance(exc, Image.DecompressionBombError):
        return _Rejected("decode", "decompression_bomb", text)
    return _Rejected("decode", "corrupt_image", text)


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
def _near_duplicate_pairs(wh: Warehouse, ids: list[str], hashes: np.ndarray, max_bits: int) -> pa.Table:
    """near_duplicates rows for this batch's images (ids oldest first): among themselves and
    against scraped images already stored. A pair already stored the other way round (the
    other image arrived first) is not added again. The batch's hashes are indexed
    (warehouse.hamming) and the stored ones read a block at a time and looked up in the index
    (a few keys each, not a comparison with every hash of the batch); memory: the index and
    one block, however many images are stored."""
    index = HammingIndex(hashes, max_bits)
    rows: list[tuple[str, str, int]] = []
    i, j, d = index.search(hashes)
    rows += [(ids[a], ids[b], int(x)) for a, b, x in zip(i, j, d) if b < a]
    with wh.connect() as con:
        con.register("batch_ids", pa.table({"image_id": pa.array(ids, pa.string())}))
        known = con.sql(
            "SELECT image_id, duplicate_of FROM near_duplicates WHERE image_id IN "
            "(SELECT image_id FROM batch_ids) OR duplicate_of IN (SELECT image_id FROM batch_ids)"
        ).fetchall()
        if len(index):
            old = con.sql(
                "SELECT image_id, phash FROM images WHERE source = 'scraped' AND phash IS NOT NULL "
                "AND image_id NOT IN (SELECT image_id FROM batch_ids)"
            ).to_arrow_reader(_STORED_BLOCK)
            for block in old:
                old_hashes = block.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)
                o, b, d = index.search(old_hashes)
                old_ids = block.column("image_id")
                rows += [(ids[a], old_ids[x].as_py(), int(y)) for x, a, y in zip(o, b, d)]
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
    return Reject(source=SOURCE, source_uri=_text(uri), stage=stage, reason=reason, detail=_text(detail))


def _label(image_id: str, f: _File) -> dict:
    return {
        "image_id": image_id,
        "emotion": f.emotion,
        "label_source": "weak",
        "confidence": None,
        "annotator": _text(f"folder:{f.folder}"),
    }


def _rows(table: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[table].schema)
