"""Scraped-image ingestion: the sample batch lands row for row, bad files become rejects,
EXIF orientation is applied, duplicates are stored once and near-duplicates reported."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import warehouse.hamming as hamming
import warehouse.sources.scraped as scraped
from ferlab.samples.scraped import BROKEN_FILES, DUPLICATE, NEAR_DUPLICATE, ROTATED, write_scraped_sample
from warehouse.hamming import hamming_pairs
from warehouse.hashing import sha256_bytes, sha256_file
from warehouse.sources.scraped import find_scraped_batches, ingest_scraped
from warehouse.store import Warehouse

TABLES = ("images", "emotion_labels", "rejects", "near_duplicates")
GOOD = [f"{folder}/{folder}_{n:02d}.{'jpg' if n % 2 == 0 else 'png'}" for folder in
        ("happy", "sad", "neutral", "unlabeled") for n in range(3)] + [NEAR_DUPLICATE[0]]  # fmt: skip


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory):
    """The default sample (seed 0), ingested once; tests that change the warehouse copy it."""
    tmp = tmp_path_factory.mktemp("scraped")
    folder = write_scraped_sample(tmp / "drop")
    wh = Warehouse(tmp / "wh")
    report = ingest_scraped(wh, folder, show_progress=False)
    return folder, wh, report


def _rel(folder: Path, uri: str) -> str:
    return Path(uri).relative_to(folder.resolve()).as_posix()


def _tuples(wh: Warehouse, query: str) -> list[tuple]:
    table = wh.sql(query)
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names)))


def _count(wh: Warehouse, table: str) -> int:
    return wh.count(table)


def _counts(wh: Warehouse) -> dict[str, int]:
    return {t: _count(wh, t) for t in TABLES}


def _png_header(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR claims width x height (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_sample_lands_row_for_row(ingested) -> None:
    folder, wh, report = ingested
    images = wh.read("images").to_pylist()
    assert sorted(_rel(folder, r["source_uri"]) for r in images) == sorted(GOOD)
    for r in images:
        path = folder / _rel(folder, r["source_uri"])
        assert r["image_id"] == sha256_file(path)
        assert (r["source"], r["batch"]) == ("scraped", "batch-001")
        assert (r["subject"], r["video_id"], r["frame_index"], r["split"]) == (None, None, None, None)
        assert r["phash"] is not None and wh.path(r["media_path"]).exists()
        if _rel(folder, r["source_uri"]) != ROTATED:  # stored as is: the media is the file
            assert sha256_file(wh.path(r["media_path"])) == r["image_id"]
            assert r["media_path"].endswith(Path(path).suffix)
            assert Image.open(path).size == (r["width"], r["height"])

    by_id = {r["image_id"]: _rel(folder, r["source_uri"]) for r in images}
    labels = wh.read("emotion_labels").to_pylist()
    assert sorted((by_id[r["image_id"]], r["emotion"], r["annotator"]) for r in labels) == sorted(
        (name, name.split("/")[0], "folder:" + name.split("/")[0])
        for name in GOOD
        if not name.startswith("unlabeled/")
    )
    assert {(r["label_source"], r["confidence"]) for r in labels} == {("weak", None)}

    rejects = {
        (_rel(folder, r["source_uri"]), r["reason"], r["stage"]) for r in wh.read("rejects").to_pylist()
    }
    assert rejects == {(name, reason, "decode") for name, reason in BROKEN_FILES} | {
        (DUPLICATE[0], "exact_duplicate", "dedup")
    }

    near = wh.read("near_duplicates").to_pylist()
    assert [(by_id[r["image_id"]], by_id[r["duplicate_of"]]) for r in near] == [NEAR_DUPLICATE]
    assert 0 <= near[0]["distance"] <= 6

    assert report.images_found == len(GOOD) == len(report.image_ids) == len(set(report.image_ids))
    assert report.added == {"images": 13, "emotion_labels": 10, "rejects": 5, "near_duplicates": 1}
    assert len(report.rejects) == 5


def test_exif_orientation_applied(ingested) -> None:
    folder, wh, _ = ingested
    raw = Image.open(folder / ROTATED)
    assert raw.getexif()[0x0112] == 6
    row = wh.sql(f"SELECT * FROM images WHERE image_id = '{sha256_file(folder / ROTATED)}'").to_pylist()[0]
    assert (row["width"], row["height"]) == (raw.height, raw.width) and raw.width != raw.height
    media = Image.open(wh.path(row["media_path"]))
    assert media.format == "PNG" and media.size == (row["width"], row["height"])
    upright = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert np.array_equal(np.asarray(media.convert("RGB")), upright)


def test_reingest_adds_nothing(ingested, tmp_path: Path) -> None:
    folder, wh, first = ingested
    before = _counts(wh)
    again = ingest_scraped(wh, folder, show_progress=False)
    assert again.added == dict.fromkeys(TABLES, 0)
    assert _counts(wh) == before
    assert again.image_ids == first.image_ids and len(again.rejects) == len(first.rejects)


def test_second_batch_repeating_an_image(ingested, tmp_path: Path) -> None:
    folder, wh0, _ = ingested
    wh = Warehouse(tmp_path / "wh")
    shutil.copytree(wh0.home, wh.home, dirs_exist_ok=True)
    before = _counts(wh)
    second = write_scraped_sample(tmp_path / "drop", batch="batch-002", per_label=1, seed=7, broken=False)
    shutil.copy(folder / "happy/happy_02.jpg", second / "sad/repeat.jpg")  # same bytes, other label
    original = np.asarray(Image.open(folder / "sad/sad_01.png"), np.int16)
    Image.fromarray(np.clip(original + 10, 0, 255).astype(np.uint8)).save(second / "brighter.png")

    report = ingest_scraped(wh, second, show_progress=False)
    repeat_id = sha256_file(folder / "happy/happy_02.jpg")
    assert repeat_id in report.image_ids
    rows = wh.sql(f"SELECT batch, source_uri FROM images WHERE image_id = '{repeat_id}'").to_pylist()
    assert rows == [{"batch": "batch-001", "source_uri": str((folder / "happy/happy_02.jpg").resolve())}]
    # per_label=1: 4 scenes + their near copy, and brighter.png; not the repeat
    assert report.added["images"] == _count(wh, "images") - before["images"] == 5 + 1
    labels = _tuples(wh, f"SELECT emotion, annotator FROM emotion_labels WHERE image_id = '{repeat_id}'")
    assert sorted(labels) == [("happy", "folder:happy"), ("sad", "folder:sad")]
    dup = [r for r in report.rejects if r.reason == "exact_duplicate" and r.source_uri.endswith("repeat.jpg")]
    assert len(dup) == 1 and dup[0].detail == f"same bytes as {(folder / 'happy/happy_02.jpg').resolve()}"
    near = _tuples(
        wh,
        f"SELECT duplicate_of FROM near_duplicates WHERE image_id = '{sha256_file(second / 'brighter.png')}'",
    )
    assert near == [(sha256_file(folder / "sad/sad_01.png"),)]
    again = ingest_scraped(wh, second, show_progress=False)
    assert again.added == dict.fromkeys(TABLES, 0)
    assert ingest_scraped(wh, folder, show_progress=False).added == dict.fromkeys(TABLES, 0)


def test_decompression_bomb_rejected_from_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = tmp_path / "bombs"
    batch.mkdir()
    (batch / "huge.png").write_bytes(_png_header(100_000, 100_000))  # Pillow itself refuses it
    (batch / "big.png").write_bytes(_png_header(9_000, 9_000))  # 81 Mpx: only our max_pixels
    (batch / "ok.jpg").write_bytes(_jpeg(1))
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile):  # records every pixel decode
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    reasons = {Path(r.source_uri).name: r.reason for r in report.rejects}
    assert reasons == {"huge.png": "decompression_bomb", "big.png": "decompression_bomb"}
    assert set(loaded) == {(64, 48)}  # only the good image was decoded
    assert _count(wh, "images") == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_folders_labels_hidden_and_broken_duplicates(tmp_path: Path) -> None:
    batch = tmp_path / "oahega"
    files = {
        "Happiness/a.jpg": _jpeg(1),
        "ANGRY/deep/er/b.jpg": _jpeg(2),
        "Ahegao/c.jpg": _jpeg(3),
        "unlabeled/d.jpg": _jpeg(4),
        "e.jpg": _jpeg(5),
        "calm/copy_of_a.jpg": _jpeg(1),  # same bytes in another label folder: a second label
        ".hidden/f.jpg": _jpeg(6),
        "sad/.DS_Store": b"junk",
        "sad/empty1.jpg": b"",
        "sad/empty2.jpg": b"",
        "sad/cut1.jpg": _jpeg(7)[:300],
        "sad/cut2.jpg": _jpeg(7)[:300],
        "sad/corrupt.png": _png_header(40, 40),  # IDAT does not hold 40 rows of pixels
        "sad/fake.jpg": b"\xff\xd8\xff" + b"garbage" * 9,
    }
    for name, data in files.items():
        (batch / name).parent.mkdir(parents=True, exist_ok=True)
        (batch / name).write_bytes(data)
    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)

    assert _tuples(wh, "SELECT DISTINCT batch FROM images") == [("oahega",)]
    assert report.images_found == _count(wh, "images") == 5
    labels = _tuples(wh, "SELECT image_id, emotion, annotator FROM emotion_labels")
    assert sorted(labels) == sorted(
        [
            (sha256_bytes(_jpeg(1)), "happy", "folder:Happiness"),
            (sha256_bytes(_jpeg(1)), "neutral", "folder:calm"),
            (sha256_bytes(_jpeg(2)), "angry", "folder:ANGRY"),
        ]
    )
    reasons = sorted((_rel(batch, r.source_uri), r.reason) for r in report.rejects)
    assert reasons == [
        ("calm/copy_of_a.jpg", "exact_duplicate"),
        ("sad/corrupt.png", "truncated_image"),
        ("sad/cut1.jpg", "truncated_image"),
        ("sad/cut2.jpg", "truncated_image"),
        ("sad/empty1.jpg", "empty_file"),
        ("sad/empty2.jpg", "empty_file"),
        ("sad/fake.jpg", "corrupt_image"),
    ]


def test_corrupt_pixel_data(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = b"\x13" * 40  # garbage where the zlib stream starts
    (tmp_path / "b").mkdir()
    (tmp_path / "b/broken.png").write_bytes(bytes(data))
    report = ingest_scraped(Warehouse(tmp_path / "wh"), tmp_path / "b", show_progress=False)
    assert [r.reason for r in report.rejects] == ["corrupt_image"]


def test_find_scraped_batches(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    for name in ("batch-b/x.jpg", "batch-a/happy/y.jpg", ".partial/z.jpg", "empty/.keep", "loose.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "nothing").mkdir()
    assert find_scraped_batches(root) == ["batch-a", "batch-b"]
    assert find_scraped_batches(tmp_path / "missing") == []


def test_hamming_pairs_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hamming, "_PAIR_BLOCK", 37)  # many small blocks
    monkeypatch.setattr(hamming, "_QUERY_BLOCK", 16)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64)
    a = np.concatenate([base, base ^ flips])  # each base hash and a 1-bit neighbour
    b = rng.integers(0, 2**63, 25, dtype=np.uint64)
    b[:5] = a[:5] ^ np.uint64(0b111)
    for other, upper in ((a, True), (b, False)):
        i, j, d = hamming_pairs(a, other, 3, upper=upper)
        expected = {
            (x, y, bin(int(a[x]) ^ int(other[y])).count("1"))
            for x in range(len(a))
            for y in range(len(other))
            if bin(int(a[x]) ^ int(other[y])).count("1") <= 3 and (not upper or y < x)
        }
        assert set(zip(i.tolist(), j.tolist(), d.tolist())) == expected and len(i) == len(expected)
        assert expected  # the test data has pairs to find


def test_killed_run_resumes(ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, full, _ = ingested
    monkeypatch.setattr(scraped, "_WRITE_EVERY", 4)  # several bounded writes per run
    wh = Warehouse(tmp_path / "wh")
    real_append_labels = wh.append_labels
    calls = {"emotion_labels": 0}

    def dying_append_labels(name: str, rows):  # the run dies between two writes, after some landed
        calls[name] += 1
        if calls[name] == 3:
            raise KeyboardInterrupt
        return real_append_labels(name, rows)

    monkeypatch.setattr(wh, "append_labels", dying_append_labels)
    with pytest.raises(KeyboardInterrupt):
        ingest_scraped(wh, folder, show_progress=False)
    partial = _counts(wh)
    assert 0 < partial["images"] < _count(full, "images")
    monkeypatch.setattr(wh, "append_labels", real_append_labels)
    ingest_scraped(wh, folder, show_progress=False)

    queries = {
        "images": "SELECT * FROM images",
        "emotion_labels": "SELECT * EXCLUDE (recorded_at) FROM emotion_labels",  # when it was written differs
        "rejects": "SELECT reject_id FROM rejects",
        "near_duplicates": "SELECT * FROM near_duplicates",
    }
    for table, query in queries.items():
        assert sorted(_tuples(wh, query)) == sorted(_tuples(full, query)), table
    assert len(list(wh.table_dir("images").glob("part-*.parquet"))) > 2  # written in bounded parts


def test_rejects_hold_after_ultralytics_patches_pillow(tmp_path: Path) -> None:
    """ultralytics replaces PIL.Image.open process-wide; a text file is still not_an_image."""
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline(tmp_path / "ultralytics")
    import ultralytics  # noqa: F401  (the import applies the patch)

    batch = tmp_path / "drop" / "b1"
    batch.mkdir(parents=True)
    (batch / "notes.jpg").write_bytes(b"not a photo\n")
    report = ingest_scraped(Warehouse(tmp_path / "home"), batch, show_progress=False)
    assert [r.reason for r in report.rejects] == ["not_an_image"]


# ---- hardening (issue 9): links, special files, file names, unsupported formats ----------
def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The first box of an ISO-BMFF file (HEIF, AVIF, MP4): size, 'ftyp', brands."""
    body = b"ftyp" + major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 4 + len(body)) + body + b"\0\0\0\x08free" + b"\x00" * 64


def _reasons(report) -> dict[str, tuple[str, str]]:
    return {r.source_uri: (r.stage, r.reason) for r in report.rejects}


SECRET = b"root:x:0:0:TOP-SECRET-LINE\n"


def _record_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the code opens, through open() or os.open()."""
    import builtins
    import os

    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, Path)):
            opened.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return opened


def test_links_leading_outside_the_batch_are_rejected_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere"
    secret = _write(outside / "passwd", SECRET)
    _write(outside / "photo.jpg", _jpeg(11))
    _write(outside / "faces/f1.jpg", _jpeg(12))
    _write(outside / "faces/f2.jpg", _jpeg(13))
    batch = tmp_path / "drop/b1"
    _write(batch / "happy/good.jpg", _jpeg(1))
    _write(batch / "unlabeled/good2.jpg", _jpeg(2))
    (batch / "happy/passwd.jpg").symlink_to(secret)
    (batch / "happy/photo.jpg").symlink_to(Path("../../../elsewhere/photo.jpg"))  # relative
    (batch / "sad").symlink_to(outside / "faces", target_is_directory=True)  # an emotion folder
    opened = _record_opens(monkeypatch)

    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    monkeypatch.undo()

    b = batch.resolve()
    assert _reasons(report) == {
        str(b / "happy/passwd.jpg"): ("read", "outside_batch"),
        str(b / "happy/photo.jpg"): ("read", "outside_batch"),
        str(b / "sad"): ("read", "outside_batch"),  # one reject for the folder, its files unlisted
    }
    assert sorted(_rel(batch, u) for (u,) in _tuples(wh, "SELECT source_uri FROM images")) == [
        "happy/good.jpg",
        "unlabeled/good2.jpg",
    ]
    stored = wh.read("rejects").to_pylist()
    assert len(stored) == 3
    for r in stored:
        assert "TOP-SECRET" not in r["detail"] and "root:x" not in r["detail"], r
        assert "outside the batch" in r["detail"]
    assert not [p for p in opened if Path(p).is_relative_to(outside.resolve())]
    assert ingest_scraped(wh, batch, show_progress=False).added == dict.fromkeys(TABLES, 0)


def test_links_inside_the_batch_are_ingested_and_say_so(tmp_path: Path) -> None:
    batch = tmp_path / "b1"
    a = _write(batch / "unlabeled/a.jpg", _jpeg(1))
    hidden = _write(batch / ".store/b.jpg", _jpeg(2))  # reached only through a link
    _write(batch / "pool/smiles/s1.jpg", _jpeg(3))
    _write(batch / "pool/smiles/s2.jpg", _jpeg(4))
    (batch / "happy").mkdir()
    (batch / "happy/alias.jpg").symlink_to(Path("../unlabeled/a.jpg"))
    (batch / "sad").mkdir()
    (batch / "sad/b.jpg").symlink_to(hidden)
    (batch / "surprise").symlink_to(Path("pool/smiles"), target_is_directory=True)  # emotion folder

    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    b = batch.resolve()
    uris = {r["image_id"]: _rel(batch, r["source_uri"]) for r in wh.read("images").to_pylist()}
    # a file reached through a link is stored under the real path its bytes were read from
    assert sorted(uris.values()) == [
        ".store/b.jpg",
        "pool/smiles/s1.jpg",
        "pool/smiles/s2.jpg",
        "unlabeled/a.jpg",
    ]
    labels = sorted((uris[i], e) for i, e in _tuples(wh, "SELECT image_id, emotion FROM emotion_labels"))
    assert labels == [
        (".store/b.jpg", "sad"),
        ("pool/smiles/s1.jpg", "surprise"),
        ("pool/smiles/s2.jpg", "surprise"),
        ("unlabeled/a.jpg", "happy"),
    ]
    # the second path to the same file is a duplicate named by the link, saying where it leads
    dups = {r.source_uri: r.detail for r in report.rejects}
    assert set(dups) == {str(b / "happy/alias.jpg"), str(b / "surprise/s1.jpg"), str(b / "surprise/s2.jpg")}
    assert {r.reason for r in report.rejects} == {"exact_duplicate"}
    assert dups[str(b / "happy/alias.jpg")].startswith(f"same bytes as {a.resolve()}")
    assert "symbolic link" in dups[str(b / "happy/alias.jpg")]
    assert ingest_scraped(wh, batch, show_progress=False).added == dict.fromkeys(TABLES, 0)


def test_broken_links_loops_and_special_files_are_rejects(tmp_path: Path) -> None:
    import os

    batch = tmp_path / "b1"
    _write(batch / "happy/good.jpg", _jpeg(1))
    _write(batch / "sad/good.jpg", _jpeg(2))
    (batch / "happy/gone.jpg").symlink_to(batch / "happy/missing.jpg")
    (batch / "happy/again").symlink_to(Path(".."), target_is_directory=True)  # a loop to the batch
    (batch / "sad/self.jpg").symlink_to(Path("self.jpg"))  # a link to itself
    os.mkfifo(batch / "happy/pipe.jpg")  # opening it would block
    (batch / "sad/pipe-link.jpg").symlink_to(Path("../happy/pipe.jpg"))

    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    b = batch.resolve()
    assert _reasons(report) == {
        str(b / "happy/gone.jpg"): ("read", "broken_link"),
        str(b / "happy/again"): ("read", "link_loop"),
        str(b / "sad/self.jpg"): ("read", "broken_link"),
        str(b / "happy/pipe.jpg"): ("read", "not_a_regular_file"),
        str(b / "sad/pipe-link.jpg"): ("read", "not_a_regular_file"),
    }
    assert report.images_found == _count(wh, "images") == 2
    assert _count(wh, "rejects") == 5
    assert ingest_scraped(wh, batch, show_progress=False).added == dict.fromkeys(TABLES, 0)


def test_batch_of_only_a_linked_folder_is_found(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    _write(root / "real/happy/a.jpg", _jpeg(1))
    (root / "linked").mkdir()
    (root / "linked/happy").symlink_to(root / "real/happy", target_is_directory=True)
    assert find_scraped_batches(root) == ["linked", "real"]


def test_non_utf8_file_names_land_with_escaped_uris(tmp_path: Path) -> None:
    import os

    drop = tmp_path / "drop"
    batch = os.path.join(os.fsencode(str(drop)), b"lot-\xff")  # the batch folder's own name too
    os.makedirs(os.path.join(batch, b"happy"))
    os.makedirs(os.path.join(batch, b"h\xe4ppy"))
    with open(os.path.join(batch, b"happy", b"caf\xe9.jpg"), "wb") as fh:
        fh.write(_jpeg(1))
    with open(os.path.join(batch, b"h\xe4ppy", b"x.jpg"), "wb") as fh:
        fh.write(_jpeg(2))
    with open(os.path.join(batch, b"happy", b"notes\xe9.jpg"), "wb") as fh:
        fh.write(b"not a photo\n")
    with open(os.path.join(batch, b"good.jpg"), "wb") as fh:
        fh.write(_jpeg(3))

    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, os.fsdecode(batch), show_progress=False)
    shown = str(drop.resolve()) + "/lot-\\xff"
    assert sorted(_tuples(wh, "SELECT source_uri, batch FROM images")) == [
        (f"{shown}/good.jpg", "lot-\\xff"),
        (f"{shown}/h\\xe4ppy/x.jpg", "lot-\\xff"),
        (f"{shown}/happy/caf\\xe9.jpg", "lot-\\xff"),
    ]
    assert _tuples(wh, "SELECT emotion, annotator FROM emotion_labels") == [("happy", "folder:happy")]
    assert [(r["source_uri"], r["reason"]) for r in wh.read("rejects").to_pylist()] == [
        (f"{shown}/happy/notes\\xe9.jpg", "not_an_image")
    ]
    assert report.images_found == 3
    assert ingest_scraped(wh, os.fsdecode(batch), show_progress=False).added == dict.fromkeys(TABLES, 0)


def test_heic_and_avif_are_unsupported_formats(tmp_path: Path) -> None:
    batch = tmp_path / "b1"
    _write(batch / "happy/phone.heic", _ftyp(b"heic", b"mif1", b"heic"))
    _write(batch / "happy/burst.heic", _ftyp(b"mif1", b"heix", b"mif1"))
    _write(batch / "happy/plain.heif", _ftyp(b"mif1", b"mif1"))
    _write(batch / "sad/web.avif", _ftyp(b"avif", b"avif", b"mif1", b"miaf"))
    _write(batch / "sad/anim.avif", _ftyp(b"msf1", b"avis", b"msf1"))  # AVIF found among the brands
    _write(batch / "sad/clip.mp4", _ftyp(b"isom", b"isom", b"mp41"))  # ISO media, not an image
    _write(batch / "sad/good.jpg", _jpeg(1))

    report = ingest_scraped(Warehouse(tmp_path / "wh"), batch, show_progress=False)
    got = {Path(r.source_uri).name: (r.reason, r.detail) for r in report.rejects}
    assert {k: v[0] for k, v in got.items()} == {
        "phone.heic": "unsupported_format",
        "burst.heic": "unsupported_format",
        "plain.heif": "unsupported_format",
        "web.avif": "unsupported_format",
        "anim.avif": "unsupported_format",
        "clip.mp4": "not_an_image",
    }
    assert got["phone.heic"][1].startswith("HEIC image") and got["burst.heic"][1].startswith("HEIC image")
    assert got["plain.heif"][1].startswith("HEIF image")
    assert got["web.avif"][1].startswith("AVIF image") and got["anim.avif"][1].startswith("AVIF image")
    assert all("convert it to JPEG or PNG" in d for r, d in got.values() if r == "unsupported_format")
    assert {r.stage for r in report.rejects} == {"decode"}
    assert report.images_found == 1


def test_one_file_failing_anywhere_is_its_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    batch = tmp_path / "b1"
    for n in range(3):
        _write(batch / f"happy/{n}.jpg", _jpeg(n, size=(64 + n, 48)))
    _write(batch / "locked/x.jpg", _jpeg(9))
    real_phash, real_scandir = scraped.phash64, os.scandir

    def phash_failing(im):  # something unforeseen in one image's decoding
        if im.size == (65, 48):
            raise ValueError("unexpected")
        return real_phash(im)

    def scandir_denied(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(scraped, "phash64", phash_failing)
    monkeypatch.setattr(os, "scandir", scandir_denied)
    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    b = batch.resolve()
    assert _reasons(report) == {
        str(b / "happy/1.jpg"): ("decode", "corrupt_image"),
        str(b / "locked"): ("read", "unreadable_folder"),
    }
    assert report.images_found == _count(wh, "images") == 2


def test_not_a_folder_is_an_input_error(tmp_path: Path) -> None:
    from warehouse.errors import InputError

    _write(tmp_path / "file.jpg", _jpeg(1))
    for bad in (tmp_path / "file.jpg", tmp_path / "missing"):
        with pytest.raises(InputError, match="not a folder"):
            ingest_scraped(Warehouse(tmp_path / "wh"), bad, show_progress=False)


def test_entry_swapped_for_a_link_after_listing_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scraper (or an attacker) replacing a listed file, or a folder on its path, by a link
    out of the batch between the listing and the read: refused before a byte is read."""
    outside = tmp_path / "elsewhere"
    _write(outside / "x.jpg", SECRET)
    _write(outside / "y.jpg", SECRET)
    batch = tmp_path / "b1"
    _write(batch / "happy/x.jpg", _jpeg(1))
    _write(batch / "sad/y.jpg", _jpeg(2))
    _write(batch / "neutral/z.jpg", _jpeg(3))
    real_walk = scraped._walk

    def walk_then_swap(folder: Path):
        listed = real_walk(folder)
        (batch / "happy/x.jpg").unlink()
        (batch / "happy/x.jpg").symlink_to(outside / "x.jpg")  # the file itself
        (batch / "sad").rename(tmp_path / "sad-moved")
        (batch / "sad").symlink_to(outside, target_is_directory=True)  # a folder on its path
        return listed

    monkeypatch.setattr(scraped, "_walk", walk_then_swap)
    wh = Warehouse(tmp_path / "wh")
    report = ingest_scraped(wh, batch, show_progress=False)
    b = batch.resolve()
    assert _reasons(report) == {
        str(b / "happy/x.jpg"): ("read", "changed_while_reading"),
        str(b / "sad/y.jpg"): ("read", "changed_while_reading"),
    }
    assert report.images_found == _count(wh, "images") == 1
    assert all("SECRET" not in r["detail"] for r in wh.read("rejects").to_pylist())
