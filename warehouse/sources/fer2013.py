"""FER-2013 (Kaggle `fer2013.csv`: emotion,pixels,Usage) into the warehouse.

The 35,887 pixel strings (2,304 space-separated values each, ~290 MB of text) are parsed
without a Python loop over rows: pyarrow reads the CSV, then numpy tokenizes the pixel
bytes of a block of rows at once (space positions -> token ends -> up to three digit gathers),
in two threads. Only rows already known to be bad are looked at one by one, to say why.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from warehouse.rejects import Reject
from warehouse.schemas import EMOTIONS
from warehouse.sources.common import IngestReport, progress
from warehouse.store import Warehouse

SIDE = 48
N_PIXELS = SIDE * SIDE
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
REQUIRED_COLUMNS = ("emotion", "pixels")
ANNOTATOR = "fer2013"


class Fer2013FormatError(ValueError):
    """The file as a whole is not a FER-2013 CSV (no usable header)."""


@dataclass
class Fer2013Rows:
    """The good rows of a FER-2013 CSV, as arrays, and a reject per bad row."""

    pixels: np.ndarray  # (n, 48, 48) uint8
    emotion: np.ndarray  # (n,) int8, index into EMOTIONS
    split: list[str | None]  # train | val | test, None without a Usage column
    line: np.ndarray  # (n,) int64, 1-based line in the file (the header is line 1)
    rejects: list[Reject] = field(default_factory=list)


def _header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    names = [c.strip().strip('"').strip() for c in first.rstrip("\r\n").split(",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing or len(set(names)) != len(names):
        raise Fer2013FormatError(
            f"{path}: header {first.strip()!r} is not FER-2013's: needs columns emotion, pixels "
            f"(and optionally Usage), found {names}"
        )
    return names


def _read_table(
    path: Path, names: list[str], use_threads: bool
) -> tuple[pa.Table, list[tuple[int | None, int]]]:
    invalid: list[tuple[int | None, int]] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        invalid.append((row.number, row.actual_columns))
        return "skip"

    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(
            column_names=names, skip_rows=1, use_threads=use_threads, block_size=1 << 24
        ),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
    )
    return table, invalid


def _tokenize_block(buf: np.ndarray, off: np.ndarray, out: np.ndarray, ok: np.ndarray) -> None:
    """Parse the pixel strings of one block of rows into `out`; mark rows parsed cleanly in `ok`.

    buf: the block's bytes; off: row offsets into buf (n+1). A clean row is 2,304 runs of 1-3
    ASCII digits separated by single spaces, each <= 255."""
    digits = buf - np.uint8(48)
    space = buf == 32
    space_pos = np.flatnonzero(space).astype(np.int32)
    spaces_per_row = np.diff(np.searchsorted(space_pos, off))
    shape_ok = spaces_per_row == N_PIXELS - 1
    bad_char = np.flatnonzero((digits > 9) & ~space)
    if len(bad_char):
        shape_ok[np.searchsorted(off, bad_char, side="right") - 1] = False
    if not shape_ok.all():
        space_pos = space_pos[np.repeat(shape_ok, spaces_per_row)]
    n_ok = int(shape_ok.sum())
    if n_ok == 0:
        return
    space_pos = space_pos.reshape(n_ok, N_PIXELS - 1)
    ends = np.empty((n_ok, N_PIXELS), np.int32)  # index of each token's last digit
    ends[:, :-1] = space_pos - 1
    ends[:, -1] = off[1:][shape_ok] - 1
    starts = np.empty((n_ok, N_PIXELS), np.int32)
    starts[:, 1:] = space_pos + 1
    starts[:, 0] = off[:-1][shape_ok]
    length = ends - starts + 1
    values = digits[ends].astype(np.uint16)
    values += np.where(length >= 2, digits[ends - 1], 0).astype(np.uint16) * 10
    values += np.where(length >= 3, digits[ends - 2], 0).astype(np.uint16) * 100
    clean = ((length >= 1) & (length <= 3) & (values <= 255)).all(axis=1)
    out[shape_ok] = values.astype(np.uint8)
    ok[shape_ok] = clean


def parse_pixels(
    pixels: pa.ChunkedArray | pa.StringArray, rows_per_block: int = 512, threads: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel strings -> (n, 2304) uint8 and a mask of the rows that parsed cleanly.

    Works on the CSV reader's chunks in place (combining them would copy ~290 MB)."""
    chunks = pixels.chunks if isinstance(pixels, pa.ChunkedArray) else [pixels]
    n = sum(len(c) for c in chunks)
    out = np.zeros((n, N_PIXELS), np.uint8)
    ok = np.zeros(n, bool)
    jobs = []  # (bytes of the chunk, its row offsets, first output row, rows)
    first = 0
    for chunk in chunks:
        rows = len(chunk)
        if rows:
            chunk = chunk.fill_null("") if chunk.null_count else chunk
            offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + rows + 1]
            data = chunk.buffers()[2]
            buf = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
            jobs += [
                (buf, offsets, first, start, min(rows, start + rows_per_block))
                for start in range(0, rows, rows_per_block)
            ]
        first += rows

    def block(job: tuple[np.ndarray, np.ndarray, int, int, int]) -> None:
        buf, offsets, first, start, stop = job
        off = offsets[start : stop + 1]
        rows = slice(first + start, first + stop)
        _tokenize_block(buf[off[0] : off[-1]], off - off[0], out[rows], ok[rows])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(block, jobs))
    return out, ok


def _pixel_problem(text: str) -> tuple[str, str]:
    """Why one pixel string did not parse (only called for the rows that failed)."""
    tokens = text.split()
    if len(tokens) != N_PIXELS:
        return "wrong_pixel_count", f"{len(tokens)} pixel values, expected {N_PIXELS}"
    for i, tok in enumerate(tokens):
        if not tok.isascii() or not tok.isdigit():
            return "non_numeric_pixel", f"pixel {i}: {tok[:20]!r} is not a number"
    for i, tok in enumerate(tokens):
        if int(tok) > 255:
            return "pixel_out_of_range", f"pixel {i}: {tok} is outside 0..255"
    return "malformed_pixels", "values must be separated by single spaces"


def parse_fer2013(path: str | Path, threads: int = 2) -> Fer2013Rows:
    path = Path(path)
    uri = str(path.resolve())
    names = _header(path)
    table, invalid = _read_table(path, names, use_threads=True)
    if invalid and any(number is None for number, _ in invalid):
        # The threaded reader does not number bad rows; read again serially (bad files only).
        table, invalid = _read_table(path, names, use_threads=False)
    rejects = [
        Reject(
            "fer2013", uri, "parse", "wrong_field_count", f"{actual} fields, expected {len(names)}", number
        )
        for number, actual in invalid
    ]
    # Physical line of each parsed row: data starts at line 2; skipped bad rows keep their line.
    bad_lines = np.array(sorted(number for number, _ in invalid), np.int64)
    n = table.num_rows
    candidates = np.arange(2, 2 + n + len(bad_lines), dtype=np.int64)
    line = np.setdiff1d(candidates, bad_lines, assume_unique=True)[:n]

    emotion_text = pc.utf8_trim_whitespace(table.column("emotion").combine_chunks())
    pixels_text = table.column("pixels")
    is_blank = pc.and_(pc.equal(emotion_text, ""), pc.equal(pixels_text, "")).to_numpy(zero_copy_only=False)
    emotion_index = pc.index_in(emotion_text, value_set=pa.array([str(i) for i in range(len(EMOTIONS))]))
    emotion = emotion_index.to_numpy(zero_copy_only=False)
    emotion_ok = ~np.isnan(emotion.astype(float)) if emotion_index.null_count else np.ones(n, bool)
    if "Usage" in names:
        usage_text = pc.utf8_trim_whitespace(table.column("Usage").combine_chunks())
        split_arr = pc.index_in(usage_text, value_set=pa.array(list(USAGE_TO_SPLIT)))
        usage_ok = split_arr.is_valid().to_numpy(zero_copy_only=False)
        split_names = np.array(list(USAGE_TO_SPLIT.values()), dtype=object)
        split_all = split_names[split_arr.fill_null(0).to_numpy(zero_copy_only=False)]
    else:
        usage_text = None
        usage_ok = np.ones(n, bool)
        split_all = np.full(n, None, dtype=object)

    pixels, pixels_ok = parse_pixels(pixels_text, threads=threads)
    good = ~is_blank & emotion_ok & usage_ok & pixels_ok
    for i in np.flatnonzero(~good):
        row_line = int(line[i])
        if is_blank[i]:
            reason, detail = "blank_line", "empty line"
        elif not emotion_ok[i]:
            reason, detail = "unknown_emotion", f"emotion {emotion_text[i].as_py()!r} is not one of 0..6"
        elif not usage_ok[i]:
            reason, detail = (
                "unknown_usage",
                f"Usage {usage_text[i].as_py()!r} is not one of {list(USAGE_TO_SPLIT)}",
            )
        else:
            reason, detail = _pixel_problem(pixels_text[i].as_py())
        rejects.append(Reject("fer2013", uri, "parse", reason, detail, row_line))
    rejects.sort(key=lambda r: r.line or 0)
    keep = np.flatnonzero(good)
    return Fer2013Rows(
        pixels=pixels[keep].reshape(-1, SIDE, SIDE),
        emotion=np.asarray(emotion, dtype=np.float64)[keep].astype(np.int8),
        split=list(split_all[keep]),
        line=line[keep],
        rejects=rejects,
    )


def _encode_png(image: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def _store_pngs(
    wh: Warehouse, images: np.ndarray, threads: int, on_block: Callable[[int], None]
) -> list[str]:
    """Encode and store each 48x48 image as PNG (threads: OpenCV, hashlib and file writes
    release the GIL); return the media paths."""
    paths: list[str] = [""] * len(images)
    block = 1024

    def work(start: int) -> int:
        for i in range(start, min(len(images), start + block)):
            paths[i] = wh.put_media(_encode_png(images[i]), "png")
        return min(block, len(images) - start)

    with ThreadPoolExecutor(threads) as pool:
        for done in pool.map(work, range(0, len(images), block)):
            on_block(done)
    return paths


def ingest_fer2013(
    wh: Warehouse, path: str | Path, threads: int = 2, show_progress: bool = True
) -> IngestReport:
    """Parse, store images (48x48 PNG) + gold emotion labels, record bad rows in rejects."""
    path = Path(path)
    uri = str(path.resolve())
    report = IngestReport("fer2013")
    rows = parse_fer2013(path, threads=threads)
    with progress(total=len(rows.pixels), desc="fer2013 images", enabled=show_progress) as pbar:
        media = _store_pngs(wh, rows.pixels, threads, pbar.update)
    image_ids = np.array([p.rsplit("/", 1)[-1].split(".", 1)[0] for p in media], dtype=object)

    # Identical pixels on two rows are one image: keep the first row, reject the others.
    _, first_index, inverse = np.unique(image_ids, return_index=True, return_inverse=True)
    first_of_row = first_index[inverse]
    dup = np.flatnonzero(first_of_row != np.arange(len(image_ids)))
    for i in dup:
        j = first_of_row[i]
        same = rows.emotion[i] == rows.emotion[j]
        rows.rejects.append(
            Reject(
                "fer2013",
                uri,
                "dedup",
                "duplicate_image",
                f"same pixels as line {rows.line[j]}"
                + (
                    ""
                    if same
                    else f" (labelled {EMOTIONS[rows.emotion[i]]} here, {EMOTIONS[rows.emotion[j]]} there)"
                ),
                int(rows.line[i]),
            )
        )
    keep = np.sort(first_index)
    n = len(keep)
    images = pa.table(
        {
            "image_id": image_ids[keep],
            "source": ["fer2013"] * n,
            "source_uri": [f"{uri}#line={ln}" for ln in rows.line[keep]],
            "subject": pa.nulls(n, pa.string()),
            "video_id": pa.nulls(n, pa.string()),
            "frame_index": pa.nulls(n, pa.int32()),
            "split": [rows.split[i] for i in keep],
            "batch": [path.name] * n,
            "width": np.full(n, SIDE, np.int32),
            "height": np.full(n, SIDE, np.int32),
            "media_path": [media[i] for i in keep],
            "phash": pa.nulls(n, pa.uint64()),
        }
    )
    labels = pa.table(
        {
            "image_id": image_ids[keep],
            "emotion": np.array(EMOTIONS, dtype=object)[rows.emotion[keep]],
            "label_source": ["gold"] * n,
            "confidence": pa.nulls(n, pa.float32()),
            "annotator": [ANNOTATOR] * n,
        }
    )
    report.add("images", wh.append("images", images))
    report.add("emotion_labels", wh.append("emotion_labels", labels))
    report.add("rejects", wh.add_rejects(rows.rejects))
    report.rejects = rows.rejects
    report.images_found = n
    report.image_ids = list(image_ids[keep])
    return report
