"""FER-2013 (Kaggle `fer2013.csv`: emotion,pixels,Usage) into the warehouse.

The 35,887 pixel strings (2,304 space-separated values each, ~290 MB of text) are parsed
without a Python loop over rows: the file is read in blocks of whole lines, and numpy finds a
block's line ends, commas and quotes, then tokenizes the pixel bytes of all its rows at once
(space positions -> the four bytes before each one, gathered as digits); blocks are parsed in
threads. Only rows already known to be bad are looked at one by one, to say why. The ingest
encodes a block's images (PNG) in the same threads as soon as it is parsed, and one more thread
writes them to the media store.

Each physical line is one row. FER-2013's fields never hold a comma or a line break, so a double
quote may only wrap a whole field (`"70 80 ..."`). A general CSV reader would take an unclosed
quote as the start of a multi-line value and swallow the rows after it (or shift every later
line number); here such a line is one `unbalanced_quote` reject and reading goes on at the next
line. A line that is not UTF-8 (`not_utf8`) or is longer than MAX_LINE_BYTES (`line_too_long`,
skipped without being held in memory) is likewise one reject. A UTF-8 BOM (Excel) is skipped,
and a gzipped file is read as such, recognised by its magic bytes whatever its name.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.atomic import atomic_write_small
from warehouse.errors import InputError
from warehouse.hashing import sha256_bytes
from warehouse.rejects import Reject
from warehouse.schemas import EMOTIONS
from warehouse.sources.common import IngestReport, progress
from warehouse.store import Warehouse, storage_error

SIDE = 48
N_PIXELS = SIDE * SIDE
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
REQUIRED_COLUMNS = ("emotion", "pixels")
ANNOTATOR = "fer2013"

# A real row is under 10 KB (2,304 values of at most 3 digits). A longer line is not a row: it is
# rejected, and skipped up to its end instead of being buffered, however long it is.
MAX_LINE_BYTES = 1 << 20
READ_BYTES = 1 << 22  # read at a time; the whole lines of each read are parsed as one block
TOKENIZE_ROWS = 128  # rows whose pixels are tokenized together (faster than a whole block)
_PAD = 4  # bytes read before a token's end (one more than the most digits a pixel has)
WRITES_QUEUED = 4  # blocks of encoded images waiting for the writer (a few MB)
MAX_HEADER_BYTES = 4096
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"

_COMMA, _QUOTE, _NEWLINE, _CR = 44, 34, 10, 13
# Line-level problems, in the order they win when a line has several (0: none found).
_WRONG_FIELD_COUNT, _BLANK, _UNBALANCED_QUOTE, _NOT_UTF8, _LINE_TOO_LONG = 1, 2, 3, 4, 5


class Fer2013FormatError(InputError):
    """The file as a whole is not a FER-2013 CSV (no usable header)."""


@dataclass
class Fer2013Rows:
    """The good rows of a FER-2013 CSV, as arrays, and a reject per bad row."""

    pixels: np.ndarray  # (n, 48, 48) uint8
    emotion: np.ndarray  # (n,) int8, index into EMOTIONS
    split: list[str | None]  # train | val | test, None without a Usage column
    line: np.ndarray  # (n,) int64, 1-based line in the file (the header is line 1)
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class _Columns:
    """Where the fields are in a row, from the header."""

    names: list[str]
    emotion: int
    pixels: int
    usage: int | None


@dataclass
class _Block:
    """The parse of one block of lines: its good rows and its rejects. Lines are numbered from
    0 in the block until `number` gives them their place in the file."""

    pixels: np.ndarray  # (k, 48, 48) uint8
    emotion: np.ndarray  # (k,) int8
    split: np.ndarray  # (k,) int8, index into USAGE_TO_SPLIT's values; -1 without a Usage column
    line: np.ndarray  # (k,) int64
    rejects: list[Reject]
    lines: int  # how many lines the block holds, good or bad

    def number(self, first_line: int) -> _Block:
        self.line += first_line
        self.rejects = [replace(r, line=r.line + first_line) for r in self.rejects]
        return self


def _printable(text: str) -> str:
    """`text` with anything unprintable escaped, for a one-line message."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _excerpt(raw: bytes, limit: int = 60) -> str:
    """A short, printable, escaped excerpt of bytes read from the input, for a message."""
    text = _printable(raw[:limit].decode("ascii", "backslashreplace"))
    return "'" + text[:limit] + ("...'" if len(text) > limit or len(raw) > limit else "'")


def _show(text: str, limit: int = 40) -> str:
    """A field's value in a reject's detail, cut short: a bad field can be a megabyte long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[Callable[[bytearray | memoryview], int], Callable[[], float]]]:
    """A `readinto(buffer)` over the file's bytes (it fills the buffer unless the file ends),
    gunzipped when the file starts with gzip's magic bytes, and a function saying which
    fraction of the file has been read.

    Whatever goes wrong reading the file as a whole is an InputError naming it."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of fer2013.csv")
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give the path of fer2013.csv") from None
    except OSError as e:
        raise InputError(
            f"{path} cannot be opened ({e.strerror}); check that it is a readable file"
        ) from None
    with raw:
        gzipped = raw.peek(len(GZIP_MAGIC))[: len(GZIP_MAGIC)] == GZIP_MAGIC
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw

        def readinto(buffer: bytearray | memoryview) -> int:
            try:
                return stream.readinto(buffer)
            except (OSError, EOFError, zlib.error) as e:
                if gzipped:
                    raise InputError(
                        f"{path}: its gzip data is damaged or cut short ({_printable(str(e))}); "
                        "download it again, or give the uncompressed fer2013.csv"
                    ) from e
                raise InputError(f"{path} could not be read ({_printable(str(e))})") from e

        size = max(os.fstat(raw.fileno()).st_size, 1)

        def read_fraction() -> float:
            return min(raw.tell() / size, 1.0)

        with stream:
            yield readinto, read_fraction


def _names(line: bytes) -> list[str]:
    return [c.strip().strip('"').strip() for c in line.decode("utf-8", "replace").split(",")]


def _header(path: Path, head: bytes) -> tuple[_Columns, int]:
    """The columns named by the first line of `head` (the file's first bytes), and where the
    rows start in `head`. A file that is not a FER-2013 CSV is one Fer2013FormatError, whose
    message shows at most a short, escaped excerpt of what the file holds."""
    start = len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0
    if len(head) == start:
        raise Fer2013FormatError(f"{path} is empty; give the path of Kaggle's fer2013.csv")
    if head.startswith(b"PK\x03\x04"):
        raise Fer2013FormatError(
            f"{path} is a zip archive; unzip it and give the path of the fer2013.csv inside"
        )
    if head[257:262] == b"ustar":
        raise Fer2013FormatError(
            f"{path} is a tar archive; extract it (tar xf) and give the path of the fer2013.csv inside"
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Fer2013FormatError(f"{path} is UTF-16 text; save it as a UTF-8 CSV and give that file")
    end = head.find(b"\n", start, start + MAX_HEADER_BYTES)
    no_header = end < 0 and len(head) - start > MAX_HEADER_BYTES  # no line end where a header would have one
    line = head[start : end if end >= 0 else start + MAX_HEADER_BYTES].rstrip(b"\r")
    names = _names(line)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if b"\r" in line and all(c in _names(line.split(b"\r", 1)[0]) for c in REQUIRED_COLUMNS):
        raise Fer2013FormatError(
            f"{path}: its lines end in a CR alone (old Mac style); convert them to LF or CRLF line ends"
        )
    if no_header or missing or len(set(names)) != len(names):
        raise Fer2013FormatError(
            f"{path}: first line {_excerpt(line)} is not FER-2013's header: needs columns emotion, pixels "
            "(and optionally Usage), each once; give the path of Kaggle's fer2013.csv"
        )
    usage = names.index("Usage") if "Usage" in names else None
    columns = _Columns(names, names.index("emotion"), names.index("pixels"), usage)
    return columns, end + 1 if end >= 0 else len(head)


def _too_long(uri: str, line: int, length: int) -> Reject:
    detail = (
        f"line is {length:,} bytes, over the {MAX_LINE_BYTES:,}-byte limit (a FER-2013 row is under 10 KB)"
    )
    return Reject("fer2013", uri, "parse", "line_too_long", detail, line)


@dataclass(frozen=True)
class _LongLine:
    """A line over MAX_LINE_BYTES, skipped: its length without the newline."""

    length: int


def _line_blocks(
    readinto: Callable[[bytearray | memoryview], int], pending: bytes | bytearray
) -> Iterator[memoryview | _LongLine]:
    """Cut the stream into blocks of whole lines, each ending in a newline, starting with
    `pending`; a last line without a newline gets one. Each block is read into a buffer of its
    own (it is parsed in another thread while the next one is read). A line longer than
    MAX_LINE_BYTES is never held whole: once that much of it is buffered, the rest is read up to
    its newline and dropped, and it comes out as a _LongLine."""
    while True:
        block = bytearray(len(pending) + READ_BYTES)
        block[: len(pending)] = pending
        got = readinto(memoryview(block)[len(pending) :])
        size = len(pending) + got
        if got == 0:  # the end: `pending` is what is left, a last line may lack its newline
            if pending:
                if block[size - 1] != _NEWLINE:
                    block[size] = _NEWLINE
                    size += 1
                yield memoryview(block)[:size]
            return
        cut = block.rfind(b"\n", 0, size) + 1
        if cut:
            yield memoryview(block)[:cut]
        pending = block[cut:size]
        if len(pending) > MAX_LINE_BYTES:
            length = len(pending)
            pending = b""
            scratch = bytearray(READ_BYTES)
            while got := readinto(scratch):
                end = scratch.find(b"\n", 0, got)
                if end >= 0:
                    length, pending = length + end, scratch[end + 1 : got]
                    break
                length += got
            yield _LongLine(length)
            if not got:
                return


def _strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """The fields buf[starts[i]:ends[i]] as one Arrow string array (short fields: emotion, Usage)."""
    lengths = ends - starts
    offsets = np.zeros(len(starts) + 1, np.int32)
    offsets[1:] = np.cumsum(lengths)
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.StringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buf[index]))


def _tokenize(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, out: np.ndarray, ok: np.ndarray) -> None:
    """Parse the pixel fields buf[starts[i]:ends[i]] of some rows into `out` (m, 2304); mark
    the rows parsed cleanly in `ok`.

    A clean row is 2,304 runs of 1-3 ASCII digits separated by single spaces, each <= 255. The
    bytes between the fields (the other fields, line ends) are in `buf` too and are left out."""
    ok[:] = False
    if len(starts) == 0:
        return
    lo, hi = int(starts[0]), int(ends[-1])
    # A token is read as the four bytes before its end: the slice starts four bytes early. A
    # field's first token stops at the byte before the field (a comma, quote or line end: no
    # digit), or at the four non-digits put ahead of the block's first byte.
    if lo >= _PAD:
        padded = buf[lo - _PAD : hi]
    else:
        padded = np.zeros(hi - lo + _PAD, np.uint8)
        padded[_PAD:] = buf[lo:hi]
    buf = padded[_PAD:]
    starts = starts - lo
    ends = ends - lo
    space = buf == 32
    space_pos = np.flatnonzero(space)
    first_space = np.searchsorted(space_pos, starts)
    spaces_per_row = np.searchsorted(space_pos, ends) - first_space
    if spaces_per_row.sum() != len(space_pos):  # spaces outside the pixel fields (e.g. " 3" as emotion)
        before = np.cumsum(spaces_per_row) - spaces_per_row
        inside = np.repeat(first_space - before, spaces_per_row) + np.arange(spaces_per_row.sum())
        space_pos = space_pos[inside]
    shape_ok = spaces_per_row == N_PIXELS - 1
    other = np.flatnonzero(((buf - np.uint8(48)) > 9) & ~space)  # neither digit nor space
    row = np.searchsorted(starts, other, side="right") - 1
    shape_ok[row[other < ends[row]]] = False
    if not shape_ok.all():
        space_pos = space_pos[np.repeat(shape_ok, spaces_per_row)]
    n_ok = int(shape_ok.sum())
    if n_ok == 0:
        return
    after = np.empty((n_ok, N_PIXELS), np.int64)  # just past each token: its space, or the field's end
    after[:, :-1] = space_pos.reshape(n_ok, N_PIXELS - 1)
    after[:, -1] = ends[shape_ok]
    # The k-th byte before each token's end as a digit value (a non-digit is >= 10), k = 1..4.
    d1, d2, d3, d4 = (padded[_PAD - k :].take(after) - np.uint8(48) for k in range(1, 5))
    two = d2 < 10  # the token has at least two digits
    three = two & (d3 < 10)
    values = np.multiply(d3, three, out=d3).astype(np.uint16) * np.uint16(100)
    values += np.multiply(d2, two, out=d2) * np.uint16(10)
    values += d1
    bad = (d1 > 9) | (values > 255)  # an empty token (a space ends it), or over 255
    bad |= three & (d4 < 10)  # four digits or more
    out[shape_ok] = values
    ok[shape_ok] = ~bad.any(axis=1)


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


def _quote_problem(line: bytes, names: list[str]) -> str:
    """Which field of a line has a double quote that does not wrap it whole."""
    for k, value in enumerate(line.split(b","), 1):
        if b'"' in value and not (
            len(value) >= 2 and value[:1] == value[-1:] == b'"' and value.count(b'"') == 2
        ):
            name = f" ({names[k - 1]})" if k <= len(names) else ""
            return (
                f"field {k}{name} has a double quote that does not open and close the whole field; "
                "FER-2013 fields hold no commas or line breaks, so each line is one row"
            )
    return "a double quote that does not open and close a whole field"


def _parse_block(data: memoryview, columns: _Columns, uri: str) -> _Block:
    """Parse one block of whole lines (each ending in a newline). Lines are numbered from 0 in
    the block (blocks are parsed in parallel; the caller knows where each one starts)."""
    buf = np.frombuffer(data, np.uint8)
    newline = np.flatnonzero(buf == _NEWLINE)
    n = len(newline)
    start = np.zeros(n, np.int64)
    start[1:] = newline[:-1] + 1
    end = newline - ((newline > start) & (buf[newline - 1] == _CR))  # a CRLF line ends before its CR
    lines = np.arange(n, dtype=np.int64)
    problem = np.zeros(n, np.int8)

    comma = np.flatnonzero(buf == _COMMA)
    comma_line = np.searchsorted(newline, comma)
    fields = np.bincount(comma_line, minlength=n) + 1
    problem[fields != len(columns.names)] = _WRONG_FIELD_COUNT
    problem[end == start] = _BLANK

    # Quotes: in each field, none, or one pair around the whole of it. Each newline and each
    # comma starts a new field, so a quote's field is numbered by how many of them precede it.
    quote = np.flatnonzero(buf == _QUOTE)
    if len(quote):
        quote_line = np.searchsorted(newline, quote)
        field_id = quote_line + np.searchsorted(comma, quote)
        opens = (quote == start[quote_line]) | (buf[quote - 1] == _COMMA)
        closes = (quote + 1 == end[quote_line]) | (buf[quote + 1] == _COMMA)
        first = np.flatnonzero(np.diff(field_id, prepend=-1) != 0)  # each field's first quote
        count = np.diff(first, append=len(quote))
        second = np.minimum(first + 1, len(quote) - 1)
        paired = (count == 2) & opens[first] & closes[second]
        problem[quote_line[first[~paired]]] = _UNBALANCED_QUOTE

    too_long = newline - start > MAX_LINE_BYTES
    # Only the lines holding a non-ASCII byte are decoded, to find those that are not UTF-8.
    not_utf8: dict[int, str] = {}
    for i in np.unique(np.searchsorted(newline, np.flatnonzero(buf >= 128))):
        if not too_long[i]:
            try:
                bytes(data[start[i] : end[i]]).decode("utf-8")
            except UnicodeDecodeError as e:
                not_utf8[int(i)] = (
                    f"byte {e.start + 1} of the line is 0x{e.object[e.start]:02x}, not UTF-8; "
                    "save the file as UTF-8"
                )
    problem[list(not_utf8)] = _NOT_UTF8
    problem[too_long] = _LINE_TOO_LONG

    rejects = []
    for i in np.flatnonzero(problem):
        code = problem[i]
        if code == _LINE_TOO_LONG:
            rejects.append(_too_long(uri, int(lines[i]), int(newline[i] - start[i])))
            continue
        if code == _NOT_UTF8:
            reason, detail = "not_utf8", not_utf8[int(i)]
        elif code == _UNBALANCED_QUOTE:
            reason, detail = "unbalanced_quote", _quote_problem(bytes(data[start[i] : end[i]]), columns.names)
        elif code == _BLANK:
            reason, detail = "blank_line", "empty line"
        else:
            reason, detail = "wrong_field_count", f"{fields[i]} fields, expected {len(columns.names)}"
        rejects.append(Reject("fer2013", uri, "parse", reason, detail, int(lines[i])))

    # The lines with the right fields: where each field starts and ends, less its quotes.
    rows = np.flatnonzero(problem == 0)
    m = len(rows)
    commas = comma[(problem == 0)[comma_line]].reshape(m, len(columns.names) - 1)
    f_start = np.empty((m, len(columns.names)), np.int64)
    f_end = np.empty((m, len(columns.names)), np.int64)
    f_start[:, 0], f_start[:, 1:] = start[rows], commas + 1
    f_end[:, :-1], f_end[:, -1] = commas, end[rows]
    quoted = (f_end - f_start >= 2) & (buf[f_start] == _QUOTE)
    f_start += quoted
    f_end -= quoted

    emotion_text = pc.utf8_trim_whitespace(
        _strings(buf, f_start[:, columns.emotion], f_end[:, columns.emotion])
    )
    p_start, p_end = f_start[:, columns.pixels], f_end[:, columns.pixels]
    is_blank = pc.equal(emotion_text, "").to_numpy(zero_copy_only=False) & (p_start == p_end)
    emotion_index = pc.index_in(emotion_text, value_set=pa.array([str(i) for i in range(len(EMOTIONS))]))
    emotion = emotion_index.fill_null(-1).to_numpy(zero_copy_only=False)
    if columns.usage is not None:
        usage = columns.usage
        usage_text = pc.utf8_trim_whitespace(_strings(buf, f_start[:, usage], f_end[:, usage]))
        split = pc.index_in(usage_text, value_set=pa.array(list(USAGE_TO_SPLIT))).fill_null(-1)
        split = split.to_numpy(zero_copy_only=False)
        usage_ok = split >= 0
    else:
        usage_text = None
        split = np.full(m, -1)
        usage_ok = np.ones(m, bool)
    pixels = np.empty((m, N_PIXELS), np.uint8)
    pixels_ok = np.empty(m, bool)
    for a in range(0, m, TOKENIZE_ROWS):  # a few hundred KB at a time: the work arrays stay in cache
        b = a + TOKENIZE_ROWS
        _tokenize(buf, p_start[a:b], p_end[a:b], pixels[a:b], pixels_ok[a:b])

    good = ~is_blank & (emotion >= 0) & usage_ok & pixels_ok
    for i in np.flatnonzero(~good):
        if is_blank[i]:
            reason, detail = "blank_line", "empty line"
        elif emotion[i] < 0:
            reason, detail = "unknown_emotion", f"emotion {_show(emotion_text[i].as_py())} is not one of 0..6"
        elif not usage_ok[i]:
            reason = "unknown_usage"
            detail = f"Usage {_show(usage_text[i].as_py())} is not one of {list(USAGE_TO_SPLIT)}"
        else:
            reason, detail = _pixel_problem(bytes(data[p_start[i] : p_end[i]]).decode("utf-8"))
        rejects.append(Reject("fer2013", uri, "parse", reason, detail, int(lines[rows[i]])))
    keep = np.flatnonzero(good)
    return _Block(
        pixels=(pixels if len(keep) == m else pixels[keep]).reshape(-1, SIDE, SIDE),
        emotion=emotion[keep].astype(np.int8),
        split=split[keep].astype(np.int8),
        line=lines[rows[keep]],
        rejects=rejects,
        lines=n,
    )


def _empty_block(lines: int = 0, rejects: list[Reject] | None = None) -> _Block:
    return _Block(
        np.zeros((0, SIDE, SIDE), np.uint8),
        *(np.zeros(0, t) for t in (np.int8, np.int8, np.int64)),
        rejects or [],
        lines,
    )


def _parsed_blocks(path: Path, pool: ThreadPoolExecutor, ahead: int) -> Iterator[tuple[_Block, float]]:
    """Parse the file's blocks of lines in `pool`, `ahead` of them in flight (memory stays
    bounded): each block numbered, in file order, with the fraction of the file read when it
    was (for a progress bar). A line too long to parse is a block of its own, with no row.

    Raises InputError (Fer2013FormatError when the file is readable but not FER-2013's) when
    the file as a whole is unusable; a bad row never stops the parse."""
    uri = str(path.resolve())
    line = 2  # the next line to number: the header is line 1
    with _open(path) as (readinto, read_fraction):
        head = bytearray(READ_BYTES)
        head = head[: readinto(head)]
        columns, rows_start = _header(path, head)
        queue: deque[tuple[Future[_Block] | _LongLine, float]] = deque()  # in file order

        def oldest() -> tuple[_Block, float]:
            nonlocal line
            item, read = queue.popleft()
            if isinstance(item, _LongLine):
                block = _empty_block(1, [_too_long(uri, 0, item.length)])
            else:
                block = item.result()
            line += block.lines
            return block.number(line - block.lines), read

        for item in _line_blocks(readinto, head[rows_start:]):
            if not isinstance(item, _LongLine):
                item = pool.submit(_parse_block, item, columns, uri)
            queue.append((item, read_fraction()))
            if len(queue) > ahead:
                yield oldest()
        while queue:
            yield oldest()


def _rows(blocks: list[_Block], with_pixels: bool = True) -> Fer2013Rows:
    """The blocks' rows as one Fer2013Rows (`pixels` left empty without `with_pixels`)."""
    rejects = sorted((r for b in blocks for r in b.rejects), key=lambda r: r.line or 0)
    blocks = [_empty_block(), *blocks]  # a file with no rows still gives arrays of the right types
    split_names = np.array([*USAGE_TO_SPLIT.values(), None], dtype=object)  # -1: no Usage column
    return Fer2013Rows(
        pixels=np.concatenate([b.pixels for b in blocks]) if with_pixels else blocks[0].pixels,
        emotion=np.concatenate([b.emotion for b in blocks]),
        split=list(split_names[np.concatenate([b.split for b in blocks])]),
        line=np.concatenate([b.line for b in blocks]),
        rejects=rejects,
    )


def parse_fer2013(path: str | Path, threads: int = 2) -> Fer2013Rows:
    """Read a FER-2013 CSV (plain or gzipped): its good rows, and one reject per bad line.

    Raises InputError (Fer2013FormatError when the file is readable but not FER-2013's) when
    the file as a whole is unusable; a bad row never stops the parse."""
    with ThreadPoolExecutor(threads) as pool:
        return _rows([block for block, _ in _parsed_blocks(Path(path), pool, threads)])


def _encode_png(image: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def _encode_pngs(images: np.ndarray) -> tuple[list[str], list[bytes]]:
    """The sha256 (the image id) and PNG bytes of each (48, 48) image."""
    pngs = [_encode_png(image) for image in images]
    return [sha256_bytes(png) for png in pngs], pngs


class _MediaWriter:
    """Writes PNGs under the data root's media/ as `Warehouse.put_media` does (content-addressed,
    each file whole or not at all), with less per file: a shard folder (media/<ab>/) that this
    writer made holds no older file, so its files are written without looking for them first.

    One thread writes: creating files went no faster from two threads (the file system takes
    them one at a time), it only cost more CPU and GIL hand-offs; the others parse and encode."""

    def __init__(self, wh: Warehouse):
        self.home = wh.home
        self.root = str(wh.home)
        self.media = str(wh.media_dir)
        self.made: dict[str, bool] = {}  # shard -> made by this writer

    def _made(self, shard: str) -> bool:
        made = self.made.get(shard)
        if made is None:
            try:
                os.mkdir(f"{self.media}/{shard}")
                made = True
            except FileExistsError:
                made = False
            self.made[shard] = made
        return made

    def write(self, digests: list[str], pngs: list[bytes]) -> int:
        """Store PNGs under their sha256; return how many."""
        try:
            for digest, png in zip(digests, pngs, strict=True):
                target = f"{self.root}/{Warehouse.media_relpath(digest, 'png')}"
                if self._made(digest[:2]) or not os.path.exists(target):
                    atomic_write_small(target, png)
        except OSError as exc:
            raise storage_error(exc, self.home) from exc
        return len(digests)


def _parse_and_store(
    wh: Warehouse | Callable[[], Warehouse], path: Path, threads: int, show_progress: bool
) -> tuple[Warehouse, Fer2013Rows, list[str]]:
    """Parse the file and store its images, a block's images as soon as it is parsed: the data
    root, the rows (without their pixels) and the image ids. `threads` parse and encode, one
    more thread writes the files (after opening the data root, when `wh` is a function that
    does: the first blocks are parsed meanwhile)."""
    blocks: list[_Block] = []
    encoded: deque[Future[tuple[list[str], list[bytes]]]] = deque()
    written: deque[Future[int]] = deque()
    digests: list[str] = []
    found = 0
    with (
        ThreadPoolExecutor(threads) as pool,
        ThreadPoolExecutor(1) as files,
        progress(total=1, desc="fer2013 images", enabled=show_progress) as pbar,
    ):
        opening = None if isinstance(wh, Warehouse) else files.submit(wh)
        writer: _MediaWriter | None = None

        def write_oldest() -> None:
            nonlocal wh, writer
            ids, pngs = encoded.popleft().result()
            digests.extend(ids)
            if writer is None:
                wh = opening.result() if opening else wh
                writer = _MediaWriter(wh)
            written.append(files.submit(writer.write, ids, pngs))
            while written and (written[0].done() or len(written) > WRITES_QUEUED):
                pbar.update(written.popleft().result())

        parsed = _parsed_blocks(path, pool, threads)
        try:
            for block, read in parsed:
                blocks.append(block)
                found += len(block.pixels)
                pbar.total = max(round(found / max(read, 1e-9)), found, 1)  # scaled to the whole file
                encoded.append(pool.submit(_encode_pngs, block.pixels))
                block.pixels = block.pixels[:0]  # the task holds them; freed once encoded
                if len(encoded) > threads:
                    write_oldest()
            pbar.total = max(found, 1)
            while encoded:
                write_oldest()
            while written:
                pbar.update(written.popleft().result())
            wh = opening.result() if opening else wh
        except BaseException:
            parsed.close()  # the file, now
            for executor in (pool, files):  # blocks not started yet are not parsed, encoded or written
                executor.shutdown(wait=False, cancel_futures=True)
            if opening is not None and not opening.cancelled():
                opening.result()  # a data root that cannot be used is the error to report first
            raise
    return wh, _rows(blocks, with_pixels=False), digests


def ingest_fer2013(
    wh: Warehouse | Callable[[], Warehouse], path: str | Path, threads: int = 2, show_progress: bool = True
) -> IngestReport:
    """Parse, store images (48x48 PNG) + gold emotion labels, record bad rows in rejects.

    `wh` may be a function that opens the data root (the CLI's): it then runs while the file's
    first blocks are parsed, since opening a new root takes a while, and what it raises is the
    error reported, whatever the file holds. Images are stored while the file is read, so an
    input error found late (a damaged gzip) can leave media files that no row names yet; the
    next ingestion of the mended file reuses them."""
    path = Path(path)
    uri = str(path.resolve())
    report = IngestReport("fer2013")
    wh, rows, digests = _parse_and_store(wh, path, threads, show_progress)
    image_ids = np.array(digests, dtype=object)

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
            "media_path": [Warehouse.media_relpath(d, "png") for d in image_ids[keep]],
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
    # A row whose emotion was corrected in the CSV supersedes the stored label (same image).
    report.count_labels("emotion_labels", wh.append_labels("emotion_labels", labels))
    report.add("rejects", wh.add_rejects(rows.rejects))
    report.rejects = rows.rejects
    report.images_found = n
    report.image_ids = list(image_ids[keep])
    return report
