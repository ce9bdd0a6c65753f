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
