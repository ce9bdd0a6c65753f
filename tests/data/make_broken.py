"""The broken-input corpus: every kind of bad input the platform must survive, with what it must
say and how many good rows must still land (issue 9). `tests/test_broken_corpus.py` builds it
into a temp folder and runs each case through the `ferlab` command line, end to end.

    python tests/data/make_broken.py [OUT]     # default tests/data/broken (committed)

The committed copy holds the regular files; what git cannot hold or should not (a FIFO, a
non-UTF-8 file name, a 60 MB line) is made only when `special=True` (the test does that).
Everything is deterministic: the same bytes on every run.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ferlab.samples.disfa import write_disfa_sample, write_label_file  # noqa: E402
from ferlab.samples.fer2013 import BROKEN_ROWS  # noqa: E402

SECRET = "SECRET-7f3a: this must never reach a reject or a log"
HEADER = "emotion,pixels,Usage\n"


@dataclass(frozen=True)
class Case:
    """One broken input: the `ferlab` commands to run (`{corpus}` is the corpus folder), and what
    the last one must give: `rejects` (reason -> count, from this input), `lines` (reason ->
    sorted 1-based lines), `images` (good rows in the warehouse afterwards), `error` (a part of
    the one-line error; the command must then exit non-zero), `stdout` (a part of its output)."""

    name: str
    commands: tuple[tuple[str, ...], ...]
    rejects: dict[str, int] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)
    images: int | None = None
    error: str | None = None
    stdout: str | None = None
    special: bool = False  # needs files made at run time (not in the committed copy)


def _row(emotion: int, seed: int, usage: str = "Training") -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, 48 * 48)
    return f"{emotion},{' '.join(map(str, pixels.tolist()))},{usage}"


def _rows(n: int, start: int = 0) -> list[str]:
    return [_row(i % 7, start + i) for i in range(n)]


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _fer(out: Path, special: bool) -> list[Case]:
    d = out / "fer2013"
    cases = []

    rows = _rows(20)
    rows[2] = rows[2].replace(",", ',"', 1)  # line 4: a quote that never closes
    _write(d / "unterminated_quote.csv", HEADER + "\n".join(rows) + "\n")
    cases.append(
        Case(
            "fer2013: an unterminated quote loses one row, not the rest",
            (("ingest", "fer2013", "{corpus}/fer2013/unterminated_quote.csv"),),
            rejects={"unbalanced_quote": 1},
            lines={"unbalanced_quote": [4]},
            images=19,
        )
    )

    rows = _rows(10, 100)
    pixels = rows[3].split(",")[1].split(" ")
    rows[3] = f'2,"{" ".join(pixels[:1152])}\n{" ".join(pixels[1152:])}",Training'  # lines 5-6
    rows.insert(7, "4,1 2 3")  # line 10 (after the two physical lines above)
    _write(d / "multiline_quote.csv", HEADER + "\n".join(rows) + "\n")
    cases.append(
        Case(
            "fer2013: a quoted field spanning two lines is two bad lines; later lines keep their numbers",
            (("ingest", "fer2013", "{corpus}/fer2013/multiline_quote.csv"),),
            rejects={"unbalanced_quote": 2, "wrong_field_count": 1},
            lines={"unbalanced_quote": [5, 6], "wrong_field_count": [10]},
            images=9,
        )
    )

    rows = [r.encode() for r in _rows(6, 200)]
    rows[1] = rows[1].replace(b"Training", b"Train\xffing")  # line 3
    _write(d / "non_utf8.csv", HEADER.encode() + b"\n".join(rows) + b"\n")
    cases.append(
        Case(
            "fer2013: a non-UTF-8 byte rejects its row only",
            (("ingest", "fer2013", "{corpus}/fer2013/non_utf8.csv"),),
            rejects={"not_utf8": 1},
            lines={"not_utf8": [3]},
            images=5,
        )
    )

    _write(d / "excel_bom.csv", "\ufeff" + HEADER + "\n".join(_rows(5, 300)) + "\n")
    cases.append(
        Case(
            "fer2013: a UTF-8 BOM (Excel) is read",
            (("ingest", "fer2013", "{corpus}/fer2013/excel_bom.csv"),),
            images=5,
        )
    )

    _write(d / "gzipped.csv.gz", gzip.compress((HEADER + "\n".join(_rows(5, 400)) + "\n").encode(), mtime=0))
    cases.append(
        Case(
            "fer2013: a gzipped CSV is read",
            (("ingest", "fer2013", "{corpus}/fer2013/gzipped.csv.gz"),),
            images=5,
        )
    )

    rng = np.random.default_rng(7)
    _write(d / "binary.csv.gz", gzip.compress(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), mtime=0))
    cases.append(
        Case(
            "fer2013: a gzipped file that is no CSV is one clear error",
            (("ingest", "fer2013", "{corpus}/fer2013/binary.csv.gz"),),
            error="not FER-2013",
        )
    )

    (d / "a_folder.csv").mkdir(parents=True, exist_ok=True)
    _write(d / "a_folder.csv" / ".keep", "")
    cases.append(
        Case(
            "fer2013: a folder given as the CSV is one clear error",
            (("ingest", "fer2013", "{corpus}/fer2013/a_folder.csv"),),
            error="folder",
        )
    )

    rows = _rows(10, 500)
    for k, (_, text) in enumerate(BROKEN_ROWS):
        rows.insert(1 + k * 3, text)
    _write(d / "bad_values.csv", HEADER + "\n".join(rows) + "\n")
    cases.append(
        Case(
            "fer2013: bad values each reject their row",
            (("ingest", "fer2013", "{corpus}/fer2013/bad_values.csv"),),
            rejects={reason: 1 for reason, _ in BROKEN_ROWS},
            images=10,
        )
    )

    rows = _rows(4, 600)
    _write(d / "labels_v1.csv", HEADER + "\n".join(rows) + "\n")
    rows[2] = "5" + rows[2][1:]  # a curator fixed the emotion of line 4
    _write(d / "labels_v2.csv", HEADER + "\n".join(rows) + "\n")
    cases.append(
        Case(
            "fer2013: a corrected emotion reaches the warehouse",
            (
                ("ingest", "fer2013", "{corpus}/fer2013/labels_v1.csv"),
                ("ingest", "fer2013", "{corpus}/fer2013/labels_v2.csv"),
            ),
            images=4,
            stdout="labels updated: 1",
        )
    )

    if special:
        rows = _rows(5, 700)
        rows.insert(2, "1," + " ".join(["7"] * 30_000_000) + ",Training")  # line 4, 60 MB
        _write(d / "huge_line.csv", HEADER + "\n".join(rows) + "\n")
    cases.append(
        Case(
            "fer2013: a 60 MB line rejects its row only",
            (("ingest", "fer2013", "{corpus}/fer2013/huge_line.csv"),),
            rejects={"line_too_long": 1},
            lines={"line_too_long": [4]},
            images=5,
            special=True,
        )
    )
    return cases


def _image(seed: int, ext: str) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 3)
    ok, data = cv2.imencode(ext, img)
    assert ok
    return data.tobytes()


def _ftyp(brand: bytes) -> bytes:
    return (24).to_bytes(4, "big") + b"ftyp" + brand + b"\x00\x00\x00\x00" + b"mif1" + brand + b"\x00" * 64


def _scraped(out: Path, special: bool) -> list[Case]:
    batch = out / "scraped" / "batch"
    outside = out / "scraped" / "outside"
    _write(batch / "happy" / "smile.jpg", _image(1, ".jpg"))
    _write(batch / "unlabeled" / "face.png", _image(2, ".png"))
    jpg = _image(3, ".jpg")
    _write(batch / "happy" / "truncated.jpg", jpg[: len(jpg) // 2])
    _write(batch / "sad" / "empty.jpg", b"")
    _write(batch / "neutral" / "notes.jpg", "these are my notes, not a photo\n")
    _write(batch / "unlabeled" / "phone.heic", _ftyp(b"heic"))
    _write(batch / "unlabeled" / "web.avif", _ftyp(b"avif"))
    _write(outside / "secret.jpg", SECRET)
    _write(outside / "angry" / "elsewhere.jpg", _image(4, ".jpg"))

    def link(name: str, target: str) -> None:
        path = batch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(target, path)

    link("unlabeled/leak.jpg", "../../outside/secret.jpg")
    link("unlabeled/gone.jpg", "does-not-exist.jpg")
    link("angry", "../outside/angry")
    rejects = {
        "truncated_image": 1,
        "empty_file": 1,
        "not_an_image": 1,
        "unsupported_format": 2,
        "outside_batch": 2,
        "broken_link": 1,
    }
    images = 2
    if special:
        os.mkfifo(batch / "unlabeled" / "pipe.jpg")
        odd = os.path.join(os.fsencode(batch / "unlabeled"), b"caf\xe9.jpg")
        with open(odd, "wb") as f:
            f.write(_image(5, ".jpg"))
        rejects["not_a_regular_file"] = 1
        images += 1
    return [
        Case(
            "scraped: links out of the batch, broken links, a FIFO, HEIC/AVIF, broken and odd-named files",
            (("ingest", "images", "{corpus}/scraped/batch"),),
            rejects=rejects,
            images=images,
            special=special,
        )
    ]


def _disfa(out: Path) -> list[Case]:
    root = out / "disfa" / "root"
    write_disfa_sample(root, subjects=("SN001", "SN002", "SN003"), frames=6, size=(96, 72), seed=3)
    video = next((root / "Videos_LeftCamera").glob("*SN002*"))
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # cut mid-file: the frames before the cut still land
    clash = root / "ActionUnit_Labels" / "sn003"
    for label in (root / "ActionUnit_Labels" / "SN003").iterdir():
        write_label_file(clash / label.name.replace("SN003", "sn003"), np.full(6, 5))
    (root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt").unlink()
    empty = out / "disfa" / "not_disfa"
    _write(empty / "readme.txt", "a folder without the DISFA layout\n")
    return [
        Case(
            "disfa: a truncated video, case-clashing label folders, a missing label file",
            (("ingest", "disfa", "{corpus}/disfa/root"),),
            rejects={"truncated_video": 1, "subject_case_clash": 1, "missing_label_file": 1},
        ),
        Case(
            "disfa: a folder without the DISFA layout is one clear error",
            (("ingest", "disfa", "{corpus}/disfa/not_disfa"),),
            error="DISFA",
        ),
    ]


def _weights(out: Path) -> list[Case]:
    import torch

    d = out / "weights"
    rng = np.random.default_rng(11)
    _write(d / "garbage.pt", rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())

    class _Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    # What an attacker ships: a torch checkpoint whose pickle runs a command when loaded (in the
    # current folder: the test runs it in a temp folder and looks for the file).
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Evil()}, d / "evil.pt")
    _write(d / "face.jpg", _image(6, ".jpg"))
    return [
        Case(
            "weights: a garbage .pt is one clear error",
            (("detect", "{corpus}/weights/face.jpg", "--detector", "{corpus}/weights/garbage.pt"),),
            error="garbage.pt",
        ),
        Case(
            "weights: a .pt whose pickle calls os.system is refused before anything runs",
            (("detect", "{corpus}/weights/face.jpg", "--detector", "{corpus}/weights/evil.pt"),),
            error="evil.pt",
        ),
    ]


def build_corpus(out: str | Path, special: bool = False) -> list[Case]:
    """Write the corpus under `out` (replacing what is there); return its cases."""
    out = Path(out)
    for sub in ("fer2013", "scraped", "disfa", "weights"):
        shutil.rmtree(out / sub, ignore_errors=True)
    cases = [*_fer(out, special), *_scraped(out, special), *_disfa(out), *_weights(out)]
    manifest = [asdict(c) for c in cases if special or not c.special]
    (out / "cases.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("broken")
    print(f"{len(build_corpus(target))} cases in {target}")
