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
