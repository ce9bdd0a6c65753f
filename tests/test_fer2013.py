from __future__ import annotations

import numpy as np
import pytest

from ferlab.samples.fer2013 import BROKEN_ROWS, write_fer2013_sample
from warehouse.schemas import EMOTIONS
from warehouse.sources.fer2013 import Fer2013FormatError, ingest_fer2013, parse_fer2013


def _naive(path):
    rows = []
    for line in path.read_text().splitlines()[1:]:
        emotion, pixels, usage = line.split(",")
        rows.append(np.array(pixels.strip('"').split(), dtype=np.uint8).reshape(48, 48))
    return np.stack(rows)


def test_parse_matches_a_naive_parse(tmp_path):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=700, faces=False, seed=3)  # > one block
    parsed = parse_fer2013(csv)
    assert not parsed.rejects
    np.testing.assert_array_equal(parsed.pixels, _naive(csv))
    assert parsed.line.tolist() == list(range(2, 702))
    assert set(parsed.split) == {"train", "val", "test"}


def test_every_kind_of_broken_row_is_rejected_with_its_line(tmp_path, wh):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=30, broken=True)
    lines = csv.read_text().splitlines()
    report = ingest_fer2013(wh, csv, show_progress=False)
    assert report.images_found == 30
    got = {(r["reason"], r["line"]) for r in wh.sql("SELECT reason, line FROM rejects").to_pylist()}
    expected = {(reason, lines.index(text) + 1) for reason, text in BROKEN_ROWS}
    assert got == expected
    assert wh.count("images") == 30 and wh.count("emotion_labels") == 30


def test_labels_splits_and_pngs(tmp_path, wh):
    import cv2

    csv = write_fer2013_sample(tmp_path / "f.csv", rows=40)
    ingest_fer2013(wh, csv, show_progress=False)
    rows = wh.sql(
        "SELECT i.media_path, i.split, i.width, i.height, e.emotion, e.label_source, i.source_uri "
        "FROM images i JOIN emotion_labels e USING (image_id) ORDER BY i.source_uri"
    ).to_pylist()
    text = csv.read_text().splitlines()
    for row in rows:
        line = int(row["source_uri"].rsplit("=", 1)[1])
        emotion, pixels, usage = text[line - 1].split(",")
        assert row["emotion"] == EMOTIONS[int(emotion)] and row["label_source"] == "gold"
        assert row["split"] == {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}[usage]
        img = cv2.imread(str(wh.path(row["media_path"])), cv2.IMREAD_UNCHANGED)
        assert img.shape == (48, 48) and (row["width"], row["height"]) == (48, 48)
        np.testing.assert_array_equal(img.ravel(), np.array(pixels.split(), dtype=np.uint8))


def test_reingest_adds_nothing(tmp_path, wh):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=20, broken=True)
    first = ingest_fer2013(wh, csv, show_progress=False)
    again = ingest_fer2013(wh, csv, show_progress=False)
    assert first.added == {"images": 20, "emotion_labels": 20, "rejects": 6}
    assert again.added == {"images": 0, "emotion_labels": 0, "rejects": 0}


def test_duplicate_pixels_are_one_image_and_a_reject(tmp_path, wh):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=10)
    lines = csv.read_text().splitlines()
    lines.append(lines[3])
    csv.write_text("\n".join(lines) + "\n")
    ingest_fer2013(wh, csv, show_progress=False)
    assert wh.count("images") == 10
    assert wh.sql("SELECT reason, line, detail FROM rejects").to_pylist() == [
        {"reason": "duplicate_image", "line": 12, "detail": "same pixels as line 4"}
    ]


def test_header_variants_and_bad_header(tmp_path):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=5)
    body = csv.read_text().splitlines()[1:]
    icml = tmp_path / "icml.csv"  # the ICML variant: spaces after commas in the header
    icml.write_text("emotion, pixels, Usage\n" + "\n".join(body) + "\r\n")
    assert len(parse_fer2013(icml).pixels) == 5
    bad = tmp_path / "bad.csv"
    bad.write_text("label,image\n1,2\n")
    with pytest.raises(Fer2013FormatError, match="needs columns emotion, pixels"):
        parse_fer2013(bad)


def test_blank_lines_and_empty_file(tmp_path, wh):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=4)
    lines = csv.read_text().splitlines()
    lines.insert(2, "")
    csv.write_text("\n".join(lines) + "\n")
    parsed = parse_fer2013(csv)
    assert len(parsed.pixels) == 4
    assert [(r.reason, r.line) for r in parsed.rejects] == [("blank_line", 3)]
    empty = tmp_path / "empty.csv"
    empty.write_text("emotion,pixels,Usage\n")
    assert len(parse_fer2013(empty).pixels) == 0


# ---- issue 9: malformed rows, encodings, huge lines, and files that are not a CSV ------------


def _sample_lines(tmp_path, rows, **kw):
    """A good sample's lines (header first), to edit before writing them back."""
    return (
        write_fer2013_sample(tmp_path / "sample.csv", rows=rows, faces=False, **kw).read_text().splitlines()
    )


def _write(path, lines, newline="\n"):
    path.write_bytes(
        b"".join((ln.encode() if isinstance(ln, str) else ln) + newline.encode() for ln in lines)
    )
    return path


def _rejects(wh):
    return [
        (r["reason"], r["line"]) for r in wh.sql("SELECT reason, line FROM rejects ORDER BY line").to_pylist()
    ]


def _quote_pixels(line):
    emotion, pixels, usage = line.split(",")
    return f'{emotion},"{pixels}",{usage}'


def test_unterminated_quote_is_one_reject_and_the_next_rows_land(tmp_path, wh):
    lines = _sample_lines(tmp_path, rows=20)
    emotion, pixels, usage = lines[3].split(",")
    lines[3] = f'{emotion},"{pixels},{usage}'  # line 4: the quote never closes
    csv = _write(tmp_path / "f.csv", lines)
    report = ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("unbalanced_quote", 4)]
    assert report.images_found == 19 and wh.count("images") == 19 and wh.count("emotion_labels") == 19


def test_a_quoted_field_over_two_lines_does_not_shift_later_line_numbers(tmp_path, wh):
    lines = _sample_lines(tmp_path, rows=12)
    lines = [lines[0]] + [_quote_pixels(ln) for ln in lines[1:]]  # Kaggle-style "70 80 ..." values
    head, tail = lines[5].split(" ", 1)
    lines[5:6] = [head, tail]  # line 6 broken in two inside its quotes: lines 6 and 7
    lines[9] = "9" + lines[9][1:]  # line 10 (the 9th image row) has an unknown emotion
    csv = _write(tmp_path / "f.csv", lines)
    ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("unbalanced_quote", 6), ("unbalanced_quote", 7), ("unknown_emotion", 10)]
    assert wh.count("images") == 10


def test_values_wrapped_in_double_quotes_parse(tmp_path):
    plain = write_fer2013_sample(tmp_path / "plain.csv", rows=30, faces=False, seed=4)
    lines = plain.read_text().splitlines()
    quoted = [lines[0]] + [",".join(f'"{v}"' for v in ln.split(",")) for ln in lines[1:]]
    parsed = parse_fer2013(_write(tmp_path / "quoted.csv", quoted, newline="\r\n"))
    assert not parsed.rejects
    np.testing.assert_array_equal(parsed.pixels, parse_fer2013(plain).pixels)
    assert parsed.split == parse_fer2013(plain).split


def test_stray_quotes_and_field_counts(tmp_path, wh):
    lines = _sample_lines(tmp_path, rows=8)
    e, p, u = lines[2].split(",")
    lines[2] = f'{e},{p}",{u}'  # line 3: a closing quote with no opening one
    e, p, u = lines[4].split(",")
    lines[4] = f'{e},"{p[:7]}"{p[7:]},{u}'  # line 5: the quotes close mid-field
    e, p, u = lines[6].split(",")
    lines[6] = f"{e},{p},{u},extra"  # line 7: one field too many
    csv = _write(tmp_path / "f.csv", lines)
    ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("unbalanced_quote", 3), ("unbalanced_quote", 5), ("wrong_field_count", 7)]
    assert wh.count("images") == 5


def test_a_non_utf8_byte_rejects_its_row_only(tmp_path, wh):
    lines = [ln.encode() for ln in _sample_lines(tmp_path, rows=10)]
    lines[4] = lines[4][:30] + b"\xff" + lines[4][31:]  # line 5, inside the pixels
    lines[7] = lines[7].replace(b"Training", b"Train\xe9ing")  # line 8, Latin-1 in the Usage
    csv = _write(tmp_path / "f.csv", lines)
    report = ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("not_utf8", 5), ("not_utf8", 8)]
    assert report.images_found == 8 and wh.count("images") == 8
    details = [r.detail for r in report.rejects]
    assert details[0].startswith("byte 31 ") and "0xff" in details[0]
    assert all(d.isprintable() and d.isascii() for d in details)


@pytest.mark.parametrize("size", [(1 << 20) + 10, 60_000_000])
def test_a_very_long_line_rejects_its_row_only(tmp_path, wh, size):
    lines = [ln.encode() for ln in _sample_lines(tmp_path, rows=10)]
    lines.insert(3, b"1," + b"7 " * (size // 2) + b",Training")  # line 4, far over any real row
    csv = _write(tmp_path / "f.csv", lines)
    report = ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("line_too_long", 4)]
    assert report.images_found == 10 and wh.count("images") == 10
    assert f"{size + 11:,} bytes" in report.rejects[0].detail


def test_a_very_long_last_line_without_newline(tmp_path, wh):
    lines = _sample_lines(tmp_path, rows=5)
    csv = tmp_path / "f.csv"
    csv.write_bytes(("\n".join(lines) + "\n").encode() + b"3," + b"9" * (3 << 20))
    ingest_fer2013(wh, csv, show_progress=False)
    assert _rejects(wh) == [("line_too_long", 7)]
    assert wh.count("images") == 5


def test_rows_straddling_reads_parse_the_same(tmp_path, monkeypatch):
    """Lines cross the reader's block boundaries: same rows, rejects and line numbers."""
    import warehouse.sources.fer2013 as fer

    csv = write_fer2013_sample(tmp_path / "f.csv", rows=40, faces=False, broken=True)
    whole = parse_fer2013(csv)
    monkeypatch.setattr(fer, "READ_BYTES", 5_000)
    monkeypatch.setattr(fer, "MAX_LINE_BYTES", 12_000)
    pieces = parse_fer2013(csv)
    np.testing.assert_array_equal(pieces.pixels, whole.pixels)
    assert pieces.line.tolist() == whole.line.tolist() and pieces.split == whole.split
    assert pieces.rejects == whole.rejects and len(whole.rejects) == len(BROKEN_ROWS)


def test_a_folder_is_an_input_error(tmp_path):
    from warehouse.errors import InputError

    with pytest.raises(InputError, match=r"is a folder; give the path of fer2013\.csv"):
        parse_fer2013(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        parse_fer2013(tmp_path / "missing.csv")


def test_a_utf8_bom_is_read(tmp_path, wh):
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=6, broken=True)
    lines = csv.read_text().splitlines()
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes().replace(b"\n", b"\r\n"))
    ingest_fer2013(wh, bom, show_progress=False)
    assert wh.count("images") == 6
    expected = [(reason, lines.index(text) + 1) for reason, text in BROKEN_ROWS]
    assert _rejects(wh) == sorted(expected, key=lambda r: r[1])


@pytest.mark.parametrize("name", ["fer2013.csv.gz", "fer2013.csv"])  # found by its magic bytes
def test_a_gzipped_csv_is_read(tmp_path, wh, name):
    import gzip

    csv = write_fer2013_sample(tmp_path / "plain.csv", rows=25, faces=False, broken=True)
    gz = tmp_path / "gz" / name
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    parsed = parse_fer2013(gz)
    plain = parse_fer2013(csv)
    np.testing.assert_array_equal(parsed.pixels, plain.pixels)
    assert [(r.reason, r.line) for r in parsed.rejects] == [(r.reason, r.line) for r in plain.rejects]
    assert ingest_fer2013(wh, gz, show_progress=False).images_found == 25


@pytest.mark.parametrize(
    "content, says",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40, "needs columns emotion, pixels"),
        (b"\x00\xff\xfe" * 5000, "needs columns emotion, pixels"),
        (b"", "is empty"),
        (b"PK\x03\x04" + bytes(200), "zip archive"),
        ("emotion,pixels,Usage\n".encode("utf-16"), "UTF-16"),
        (b"emotion,pixels,Usage\r" + b"0," + b"7 " * 3000 + b"\r", "CR alone"),
    ],
)
def test_a_file_that_is_not_fer2013_is_one_printable_line(tmp_path, content, says):
    from warehouse.errors import InputError

    bad = tmp_path / "fer2013.csv"
    bad.write_bytes(content)
    with pytest.raises(Fer2013FormatError, match=says) as caught:
        parse_fer2013(bad)
    message = str(caught.value)
    assert isinstance(caught.value, InputError) and isinstance(caught.value, ValueError)
    assert message.isprintable() and len(message) < 300 + len(str(bad))


def test_a_tar_gz_download_and_a_damaged_gzip_say_what_to_do(tmp_path):
    import gzip
    import tarfile

    from warehouse.errors import InputError

    csv = write_fer2013_sample(tmp_path / "fer2013.csv", rows=5)
    tgz = tmp_path / "fer2013.tar.gz"  # what Kaggle's download is
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(csv, arcname="fer2013/fer2013.csv")
    with pytest.raises(Fer2013FormatError, match="tar archive; extract"):
        parse_fer2013(tgz)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(csv.read_bytes())[:-200])
    with pytest.raises(InputError, match="damaged or cut short") as caught:
        parse_fer2013(cut)
    assert str(caught.value).isprintable()


# ---- issue: the whole ingest at most half a naive parse's time ---------------------------------


def _known_images():
    i, j = np.mgrid[:48, :48]
    return [
        np.zeros((48, 48), np.uint8),
        ((i + j) % 256).astype(np.uint8),
        ((i * 7 + j * 13) % 256).astype(np.uint8),
    ]


# The ids the ingest gave _known_images when it stored each one with put_media(cv2.imencode(...)):
# a re-ingest of a data root written then must find every image already there.
KNOWN_IDS = [
    "b39ce0ff973b44207c70b22b76c669e3e2585bd1f5de56523269625090eb438d",
    "31e4a82ac1ea49a027b9300674c17a6d3bd84939b79c4038d837f91756bff079",
    "88767b8f1788bb724331ea133718e519d0abbb5c914e547b3ea10cfadf5c2cfb",
]


def test_image_ids_and_bytes_are_those_of_the_put_media_path(tmp_path, wh):
    import cv2

    from warehouse import Warehouse

    known = _write(
        tmp_path / "known.csv",
        ["emotion,pixels,Usage"]
        + [f"{k},{' '.join(map(str, im.ravel()))},Training" for k, im in enumerate(_known_images())],
    )
    assert ingest_fer2013(wh, known, show_progress=False).image_ids == KNOWN_IDS
    faces = write_fer2013_sample(tmp_path / "faces.csv", rows=60, faces=True, seed=7)
    report = ingest_fer2013(wh, faces, show_progress=False)
    old = Warehouse(tmp_path / "old")  # the code path the ingest used to take, image by image
    old_paths = [
        old.put_media(cv2.imencode(".png", im)[1].tobytes(), "png") for im in parse_fer2013(faces).pixels
    ]
    rows = wh.sql("SELECT image_id, media_path FROM images").to_pylist()
    stored = {r["image_id"]: r["media_path"] for r in rows}
    assert [stored[i] for i in report.image_ids] == old_paths
    for rel in old_paths:
        assert wh.path(rel).read_bytes() == old.path(rel).read_bytes()
    assert not list(wh.media_dir.rglob("*.tmp"))


def test_an_ingest_over_a_root_with_the_images_adds_nothing(tmp_path, wh):
    import cv2

    csv = write_fer2013_sample(tmp_path / "f.csv", rows=30, faces=True, seed=8)
    for image in parse_fer2013(csv).pixels:  # media written earlier, as put_media writes them
        wh.put_media(cv2.imencode(".png", image)[1].tobytes(), "png")
    before = sorted(p.relative_to(wh.home) for p in wh.media_dir.rglob("*"))
    assert ingest_fer2013(wh, csv, show_progress=False).added["images"] == 30
    assert sorted(p.relative_to(wh.home) for p in wh.media_dir.rglob("*")) == before


def test_pixel_rows_agree_with_a_per_row_reference(tmp_path):
    """The vectorised tokenizer against the rule it implements, on rows broken in many ways."""
    import re

    rng = np.random.default_rng(11)
    lines, expected = ["emotion,pixels,Usage"], {}
    for n in range(2, 202):
        values = [str(v) for v in rng.integers(0, 256, 2304)]
        k = int(rng.integers(0, 2304))
        kind = n % 10
        if kind == 1:
            values[k] = str(rng.choice(["256", "999", "0255", "000", "1000", "", "a", "+1", "1.5"]))
        elif kind == 2:
            values.insert(k, "7")
        elif kind == 3:
            del values[k]
        text = " ".join(values)
        if kind == 4:
            text = rng.choice([" ", "  ", "\t"]) + text if rng.random() < 0.5 else text + " "
        elif kind == 5:
            text = text.replace(" ", "  ", 1)
        lines.append(f"3,{text},Training")
        fine = re.fullmatch(r"\d{1,3}( \d{1,3}){2303}", text) and all(int(v) <= 255 for v in text.split(" "))
        if fine:
            expected[n] = np.array(text.split(" "), np.uint8).reshape(48, 48)
    parsed = parse_fer2013(_write(tmp_path / "f.csv", lines))
    assert parsed.line.tolist() == sorted(expected)
    for line, pixels in zip(parsed.line.tolist(), parsed.pixels):
        np.testing.assert_array_equal(pixels, expected[line])
    assert sorted(r.line for r in parsed.rejects) == sorted(set(range(2, 202)) - set(expected))


def test_the_progress_bar_ends_at_the_images_found(tmp_path, wh, monkeypatch):
    import warehouse.sources.fer2013 as fer

    bars = []

    def progress(**kwargs):
        bars.append(fer_progress(**kwargs))
        return bars[-1]

    fer_progress = fer.progress
    monkeypatch.setattr(fer, "progress", progress)
    monkeypatch.setattr(fer, "READ_BYTES", 50_000)  # several blocks, so the total is estimated first
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=40, broken=True)
    ingest_fer2013(wh, csv, show_progress=True)
    assert len(bars) == 1 and bars[0].n == bars[0].total == 40


def test_atomic_write_small_leaves_the_whole_file_or_nothing(tmp_path, monkeypatch):
    import errno
    import os

    from warehouse.atomic import _TMP_PID, atomic_write_small

    target = str(tmp_path / "ab.png")
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_small(target, b"x" * 5000)
    assert (tmp_path / "ab.png").read_bytes() == b"x" * 5000
    assert _TMP_PID.search(os.path.basename(renamed[0]))  # a killed writer's temp file is found
    assert os.listdir(tmp_path) == ["ab.png"]

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_small(str(tmp_path / "cd.png"), b"y" * 10)
    assert os.listdir(tmp_path) == ["ab.png"]


def test_a_failure_while_storing_stops_the_ingest_with_no_rows(tmp_path, wh, monkeypatch):
    import errno
    import re

    import warehouse.sources.fer2013 as fer
    from warehouse.errors import StorageError

    written = []
    real_write = fer.atomic_write_small

    def fill_up(target, data):
        if len(written) == 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(target)
        real_write(target, data)

    monkeypatch.setattr(fer, "atomic_write_small", fill_up)
    monkeypatch.setattr(fer, "READ_BYTES", 50_000)  # many blocks: some are still to parse or store
    csv = write_fer2013_sample(tmp_path / "f.csv", rows=200, faces=False)
    with pytest.raises(StorageError, match=re.escape(str(wh.home))):
        ingest_fer2013(wh, csv, show_progress=False)
    assert wh.count("images") == 0 and wh.count("emotion_labels") == 0
    assert 50 <= len(written) < 200 and not list(wh.media_dir.rglob("*.tmp"))


def test_a_data_root_opened_beside_the_parse(tmp_path):
    from warehouse import Warehouse
    from warehouse.errors import StorageError

    csv = write_fer2013_sample(tmp_path / "f.csv", rows=20, broken=True)
    report = ingest_fer2013(lambda: Warehouse(tmp_path / "home"), csv, show_progress=False)
    assert report.added == {"images": 20, "emotion_labels": 20, "rejects": 6}
    assert Warehouse(tmp_path / "home").count("images") == 20

    def unusable():
        raise StorageError("data root: read-only file system")

    not_a_csv = tmp_path / "fer2013.csv.zip"
    not_a_csv.write_bytes(b"PK\x03\x04" + bytes(200))
    for path in (csv, not_a_csv, tmp_path / "missing.csv"):  # the root's error comes first
        with pytest.raises(StorageError, match="read-only"):
            ingest_fer2013(unusable, path, show_progress=False)
