"""DISFA ingestion: good data lands exactly once; each kind of bad input is a reject row and
never costs the good rows around it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.samples.disfa import disfa_label_path, disfa_video_path, write_disfa_sample
from warehouse.errors import ConfigError, InputError
from warehouse.schemas import AU_PRESENT_THRESHOLD, DISFA_AUS
from warehouse.sources.disfa import _parse_labels, find_disfa_subjects, ingest_disfa
from warehouse.store import Warehouse

FRAMES = 40
N_AUS = len(DISFA_AUS)
SUBJECTS = ("SN001", "SN002")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_disfa_sample(tmp_path_factory.mktemp("disfa") / "DISFA", SUBJECTS, FRAMES)


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the sample, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "DISFA"))


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "wh")


def ingest(wh: Warehouse, root: Path, **kw):
    return ingest_disfa(wh, root, show_progress=False, **kw)


def rejects(wh: Warehouse) -> list[tuple[str, int | None]]:
    return sorted((r["reason"], r["line"]) for r in wh.sql("SELECT reason, line FROM rejects").to_pylist())


def count(wh: Warehouse, query: str) -> int:
    return wh.sql(query).column(0)[0].as_py()


def n_rows(wh: Warehouse, table: str) -> int:
    return wh.count(table)


def images_of(wh: Warehouse, video_id: str) -> int:
    return count(wh, f"SELECT count(*) FROM images WHERE video_id = '{video_id}'")


def labels_of(wh: Warehouse, video_id: str, au: int | None = None) -> int:
    where = f"i.video_id = '{video_id}'" + (f" AND l.au = {au}" if au is not None else "")
    return count(wh, f"SELECT count(*) FROM au_labels l JOIN images i USING (image_id) WHERE {where}")


def read_labels(root: Path, subject: str, au: int) -> dict[int, int]:
    lines = disfa_label_path(root, subject, au).read_text().split()
    return {int(f): int(v) for f, v in (line.split(",") for line in lines)}


def frame_paths(wh: Warehouse, video_id: str) -> dict[int, str]:
    rows = wh.sql(f"SELECT frame_index, media_path FROM images WHERE video_id = '{video_id}'").to_pylist()
    return {r["frame_index"]: r["media_path"] for r in rows}


# ---- good data ---------------------------------------------------------------------------
def test_sample_is_deterministic_and_in_the_real_layout(pristine: Path, tmp_path: Path) -> None:
    again = write_disfa_sample(tmp_path / "again", SUBJECTS, FRAMES)
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((pristine / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert Path("Videos_LeftCamera/LeftVideoSN001_comp.avi") in files
    assert len(files) == len(SUBJECTS) * (1 + N_AUS)
    assert find_disfa_subjects(pristine) == list(SUBJECTS)


def test_ingest_stores_every_frame_and_label(root: Path, wh: Warehouse) -> None:
    report = ingest(wh, root)

    n_images = len(SUBJECTS) * FRAMES
    assert report.added == {"images": n_images, "au_labels": n_images * N_AUS, "rejects": 0}
    assert report.images_found == n_images and len(set(report.image_ids)) == n_images
    assert n_rows(wh, "images") == n_images and n_rows(wh, "au_labels") == n_images * N_AUS
    assert rejects(wh) == []

    img = wh.sql("SELECT * FROM images WHERE video_id = 'SN001_left' AND frame_index = 7").to_pylist()[0]
    video = disfa_video_path(root, "SN001", "left").resolve()
    assert img["source"] == "disfa" and img["source_uri"] == f"{video}#frame=7"
    assert (img["subject"], img["batch"], img["split"]) == ("SN001", "SN001", None)
    assert (img["width"], img["height"]) == (320, 240)
    assert cv2.imread(str(wh.path(img["media_path"]))).shape == (240, 320, 3)

    # Intensities and the present flag come straight from the label files.
    got = wh.sql(
        "SELECT i.subject, i.frame_index, l.au, l.intensity, l.present, l.label_source, l.annotator, "
        "l.probability FROM au_labels l JOIN images i USING (image_id)"
    ).to_pylist()
    truth = {(s, au): read_labels(root, s, au) for s in SUBJECTS for au in DISFA_AUS}
    for row in got:
        want = truth[(row["subject"], row["au"])][row["frame_index"]]
        assert row["intensity"] == want
        assert row["present"] == (want >= AU_PRESENT_THRESHOLD)
        assert (row["label_source"], row["annotator"], row["probability"]) == ("gold", "disfa", None)
    assert 0 < sum(r["present"] for r in got) < len(got)


def test_reingest_adds_nothing(root: Path, wh: Warehouse, tmp_path: Path) -> None:
    first = ingest(wh, root)
    again = ingest(wh, root)
    assert again.added == {"images": 0, "au_labels": 0, "rejects": 0}
    assert again.images_found == first.images_found and again.image_ids == first.image_ids

    # Ids hash the video's bytes, not its path: a moved data root dedups too.
    moved = Path(shutil.move(root, tmp_path / "moved"))
    assert ingest(wh, moved).added == {"images": 0, "au_labels": 0, "rejects": 0}
    assert n_rows(wh, "images") == len(SUBJECTS) * FRAMES


def test_stride_keeps_every_other_frame(root: Path, wh: Warehouse) -> None:
    report = ingest(wh, root, stride=2)
    assert report.added["images"] == len(SUBJECTS) * FRAMES // 2
    assert report.added["au_labels"] == len(SUBJECTS) * FRAMES // 2 * N_AUS
    assert sorted(frame_paths(wh, "SN001_left")) == list(range(1, FRAMES + 1, 2))
    # The same frames as in a full ingest, so a later stride=1 run only adds the rest.
    assert ingest(wh, root).added["images"] == len(SUBJECTS) * FRAMES // 2


def test_both_cameras_with_mixed_case_names(tmp_path: Path, wh: Warehouse) -> None:
    root = write_disfa_sample(tmp_path / "two", ("SN003",), 12, cameras=("left", "right"))
    assert disfa_video_path(root, "SN003", "right").name == "RightVideoSN003_Comp.avi"
    report = ingest(wh, root)
    assert report.added == {"images": 24, "au_labels": 24 * N_AUS, "rejects": 0}
    assert images_of(wh, "SN003_left") == images_of(wh, "SN003_right") == 12


# ---- bad videos ----------------------------------------------------------------------------
def test_unreadable_videos(tmp_path: Path, wh: Warehouse) -> None:
    root = write_disfa_sample(tmp_path / "d", ("SN001", "SN002", "SN003"), 12, cameras=("left", "right"))
    disfa_video_path(root, "SN001", "left").write_bytes(b"")
    disfa_video_path(root, "SN002", "left").write_bytes(np.random.default_rng(1).bytes(50_000))
    disfa_video_path(root, "SN003", "left").write_bytes(b"RIFF\x10\x00\x00\x00AVI LIST" + b"\x00" * 20)

    report = ingest(wh, root)

    assert rejects(wh) == [("unreadable_video", None)] * 3
    assert {r.source_uri for r in report.rejects} == {
        str(disfa_video_path(root, s, "left").resolve()) for s in ("SN001", "SN002", "SN003")
    }
    for s in ("SN001", "SN002", "SN003"):
        assert images_of(wh, f"{s}_left") == 0
        assert images_of(wh, f"{s}_right") == 12 and labels_of(wh, f"{s}_right") == 12 * N_AUS
    assert n_rows(wh, "au_labels") == 3 * 12 * N_AUS  # no labels for frames that do not exist


@pytest.mark.parametrize(
    ("keep", "where"),
    [(0.6, "mid-file"), (-2_000, "inside the last frame"), (-100, "inside the AVI index")],
)
def test_truncated_video(root: Path, pristine: Path, wh: Warehouse, tmp_path: Path, keep, where) -> None:
    video = disfa_video_path(root, "SN001", "left")
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])

    report = ingest(wh, root)

    got = rejects(wh)
    assert [reason for reason, _ in got] == ["truncated_video"], where
    detail = report.rejects[0].detail
    stored = frame_paths(wh, "SN001_left")
    n = len(stored)
    assert sorted(stored) == list(range(1, n + 1))
    if where == "inside the AVI index":
        # Every frame is whole; only the index is gone.
        assert n == FRAMES and got == [("truncated_video", None)]
    else:
        # OpenCV hands back the frame the cut runs through, half grey: it must not land.
        assert 0 < n < FRAMES and got == [("truncated_video", n + 1)]
        assert f"frame {n + 1} not stored" in detail
    assert labels_of(wh, "SN001_left") == n * N_AUS
    assert images_of(wh, "SN002_left") == FRAMES and labels_of(wh, "SN002_left") == FRAMES * N_AUS

    # The frames that landed are the intact ones: byte for byte what the whole video gives.
    whole = Warehouse(tmp_path / "whole")
    ingest(whole, pristine, subjects=["SN001"])
    full = frame_paths(whole, "SN001_left")
    assert all(full[f] == path for f, path in stored.items())

    assert ingest(wh, root).added == {"images": 0, "au_labels": 0, "rejects": 0}


def lose_frame_21(video: Path) -> None:
    """Break the header of the 21st frame chunk: FFmpeg skips that frame without a word, so
    the count is short though the file is whole (not truncated)."""
    data = bytearray(video.read_bytes())
    pos = data.index(b"movi")
    for _ in range(21):
        pos = data.index(b"00dc", pos + 1)
    data[pos : pos + 8] = b"\xff" * 8
    video.write_bytes(bytes(data))


def test_frame_lost_inside_a_whole_video(root: Path, wh: Warehouse) -> None:
    lose_frame_21(disfa_video_path(root, "SN001", "left"))

    report = ingest(wh, root)

    assert rejects(wh) == [("lost_frames", None)]
    assert "1 frame(s) early" in report.rejects[0].detail
    assert images_of(wh, "SN001_left") == FRAMES - 1
    assert labels_of(wh, "SN001_left") == (FRAMES - 1) * N_AUS


def test_frame_that_fails_to_decode_midway(root: Path, wh: Warehouse, monkeypatch) -> None:
    real = cv2.VideoCapture

    class FailsAtFrame10:
        """A capture whose retrieve() fails at frame 10, like a decoder error mid-file."""

        def __init__(self, path: str) -> None:
            self.cap, self.n = real(path), 0
            self.fail = "SN001" in path

        def grab(self) -> bool:
            ok = self.cap.grab()
            self.n += ok
            return ok

        def retrieve(self):
            return (False, None) if self.fail and self.n == 10 else self.cap.retrieve()

        def __getattr__(self, name: str):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", FailsAtFrame10)
    report = ingest(wh, root)

    assert rejects(wh) == [("truncated_video", 10)]
    assert "frame 10 could not be decoded" in report.rejects[0].detail
    assert sorted(frame_paths(wh, "SN001_left")) == list(range(1, 10))
    assert labels_of(wh, "SN001_left") == 9 * N_AUS
    assert images_of(wh, "SN002_left") == FRAMES


# ---- bad labels ----------------------------------------------------------------------------
def test_missing_label_file(root: Path, wh: Warehouse) -> None:
    path = disfa_label_path(root, "SN001", 4)
    path.unlink()
    report = ingest(wh, root)
    assert rejects(wh) == [("missing_label_file", None)]
    assert report.rejects[0].source_uri == str(path)
    assert labels_of(wh, "SN001_left", au=4) == 0
    assert labels_of(wh, "SN001_left") == FRAMES * (N_AUS - 1)
    assert n_rows(wh, "images") == len(SUBJECTS) * FRAMES


def test_label_frame_count_mismatch(root: Path, wh: Warehouse) -> None:
    longer = disfa_label_path(root, "SN001", 1)
    longer.write_text(longer.read_text() + "".join(f"{f},1\n" for f in range(FRAMES + 1, FRAMES + 6)))
    shorter = disfa_label_path(root, "SN001", 2)
    shorter.write_text("".join(shorter.read_text().splitlines(keepends=True)[:30]))

    report = ingest(wh, root)

    # One reject per file; the frames past the video's end need no reject of their own.
    assert rejects(wh) == [("frame_count_mismatch", None)] * 2
    assert {r.source_uri for r in report.rejects} == {str(longer), str(shorter)}
    assert labels_of(wh, "SN001_left", au=1) == FRAMES
    assert labels_of(wh, "SN001_left", au=2) == 30
    assert n_rows(wh, "au_labels") == len(SUBJECTS) * FRAMES * N_AUS - (FRAMES - 30)


def test_bad_label_lines(root: Path, wh: Warehouse) -> None:
    path = disfa_label_path(root, "SN001", 1)
    lines = path.read_text().splitlines()
    bad = {
        3: ("3", "bad_field_count"),
        5: ("5,x", "non_numeric"),
        7: ("7,9", "intensity_out_of_range"),
        8: ("8,-1", "intensity_out_of_range"),
        9: ("9999,1", "frame_out_of_range"),
        12: ("0,1", "frame_out_of_range"),
        14: ("14,2.5", "non_integer"),
        16: ("", "empty_line"),
        18: ("18,1,4", "bad_field_count"),
        21: ("20,4", "duplicate_frame"),  # frame 20 again; its first line wins
    }
    for line_no, (text, _) in bad.items():
        lines[line_no - 1] = text
    lines[0] = " 1 , 3 "  # spaces around fields are fine
    path.write_text("\r\n".join(lines) + "\r\n\n\n")  # so are CRLF and blank lines at the end

    ingest(wh, root)

    assert rejects(wh) == sorted((reason, line) for line, (_, reason) in bad.items())
    stored = {
        r["frame_index"]: r["intensity"]
        for r in wh.sql(
            "SELECT i.frame_index, l.intensity FROM au_labels l JOIN images i USING (image_id) "
            "WHERE i.video_id = 'SN001_left' AND l.au = 1"
        ).to_pylist()
    }
    assert sorted(stored) == [f for f in range(1, FRAMES + 1) if f not in bad]
    assert stored[1] == 3 and stored[20] == int(lines[19].split(",")[1])
    # Every other AU and subject is untouched.
    assert n_rows(wh, "au_labels") == len(SUBJECTS) * FRAMES * N_AUS - len(bad)
    assert n_rows(wh, "images") == len(SUBJECTS) * FRAMES


def test_labels_without_video(tmp_path: Path, wh: Warehouse) -> None:
    root = write_disfa_sample(tmp_path / "d", ("SN001", "SN005"), 10)
    disfa_video_path(root, "SN005", "left").unlink()
    assert find_disfa_subjects(root) == ["SN001", "SN005"]
    report = ingest(wh, root)
    assert rejects(wh) == [("missing_video", None)]
    assert "SN005" in report.rejects[0].detail
    assert images_of(wh, "SN001_left") == 10 and n_rows(wh, "au_labels") == 10 * N_AUS


def test_a_whole_label_file_parses(tmp_path: Path) -> None:
    # (Its speed is not asserted here: wall-clock limits fail on a busy machine.)
    path = tmp_path / "SN001_au1.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{f},{v}\n" for f, v in enumerate(rng.integers(0, 6, 4845), start=1)))
    labels, bad = _parse_labels(path)
    assert bad == [] and labels.n_lines == 4845 and labels.frames.tolist() == list(range(1, 4846))


# ---- case clashes: names match case-insensitively, so two names can claim one thing ----------
def edit_labels(path: Path, frames: range, value) -> int:
    """Set the intensity of `frames` in a label file; return how many values changed."""
    lines = path.read_text().splitlines()
    changed = 0
    for f in frames:
        new = value(f) if callable(value) else value
        old = int(lines[f - 1].split(",")[1])
        changed += old != new
        lines[f - 1] = f"{f},{new}"
    path.write_text("\n".join(lines) + "\n")
    return changed


def test_label_folder_case_clash(root: Path, wh: Warehouse) -> None:
    # A second copy of SN001's labels under `sn001/`, with other values for AU1: either folder
    # could be the right one, so neither is guessed.
    labels = root / "ActionUnit_Labels"
    shutil.copytree(labels / "SN001", labels / "sn001")
    clone = labels / "sn001" / "SN001_au1.txt"
    assert edit_labels(clone, range(1, FRAMES + 1), lambda f: 5 - read_labels(root, "SN001", 1)[f]) > 0

    report = ingest(wh, root)

    assert rejects(wh) == [("subject_case_clash", None)]
    reject = report.rejects[0]
    assert reject.stage == "labels"
    assert str(labels / "SN001") in reject.detail and str(labels / "sn001") in reject.detail
    # The frames are stored (the video is not in doubt); the subject's labels are not.
    assert images_of(wh, "SN001_left") == FRAMES and labels_of(wh, "SN001_left") == 0
    assert images_of(wh, "SN002_left") == FRAMES and labels_of(wh, "SN002_left") == FRAMES * N_AUS
    assert find_disfa_subjects(root) == list(SUBJECTS)

    # Once the user keeps one folder, a re-run adds the labels to the stored frames.
    shutil.rmtree(labels / "sn001")
    again = ingest(wh, root)
    assert again.added == {"images": 0, "au_labels": FRAMES * N_AUS, "rejects": 0}
    assert labels_of(wh, "SN001_left", au=1) == FRAMES


def test_video_case_clash(root: Path, wh: Warehouse) -> None:
    # `LeftVideosn001_comp.avi` next to `LeftVideoSN001_comp.avi`, with other frames: which one
    # the labels describe is a guess, so neither is stored.
    left = disfa_video_path(root, "SN001", "left")
    clash = left.with_name("LeftVideosn001_comp.avi")
    shutil.copy(disfa_video_path(root, "SN002", "left"), clash)

    report = ingest(wh, root)

    assert rejects(wh) == [("subject_case_clash", None)]
    reject = report.rejects[0]
    assert reject.stage == "discover"
    assert str(left.resolve()) in reject.detail and str(clash.resolve()) in reject.detail
    assert images_of(wh, "SN001_left") == 0
    assert images_of(wh, "SN002_left") == FRAMES and labels_of(wh, "SN002_left") == FRAMES * N_AUS
    assert n_rows(wh, "images") == FRAMES


def test_video_case_clash_leaves_the_other_camera(tmp_path: Path, wh: Warehouse) -> None:
    root = write_disfa_sample(tmp_path / "two", ("SN003",), 12, cameras=("left", "right"))
    right = disfa_video_path(root, "SN003", "right")
    shutil.copy(right, right.with_name("RightVideoSN003_comp.avi"))  # `_Comp` and `_comp`
    ingest(wh, root)
    assert rejects(wh) == [("subject_case_clash", None)]
    assert images_of(wh, "SN003_right") == 0
    assert images_of(wh, "SN003_left") == 12 and labels_of(wh, "SN003_left") == 12 * N_AUS


def test_label_file_case_clash(root: Path, wh: Warehouse) -> None:
    path = disfa_label_path(root, "SN001", 1)
    clash = path.with_name("sn001_AU1.txt")
    shutil.copy(path, clash)
    edit_labels(clash, range(1, FRAMES + 1), 5)

    report = ingest(wh, root)

    assert rejects(wh) == [("label_file_case_clash", None)]
    assert str(path) in report.rejects[0].detail and str(clash) in report.rejects[0].detail
    assert labels_of(wh, "SN001_left", au=1) == 0
    assert labels_of(wh, "SN001_left") == FRAMES * (N_AUS - 1)


# ---- not DISFA at all ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "a file", "empty", "photos", "misnamed", "the parent"])
def test_a_folder_without_the_disfa_layout_is_an_input_error(
    pristine: Path, tmp_path: Path, wh: Warehouse, case: str
) -> None:
    root = tmp_path / "in"
    if case == "a file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "photos":
        root.mkdir()
        cv2.imwrite(str(root / "face.jpg"), np.zeros((8, 8, 3), np.uint8))
    elif case == "misnamed":  # the folders are there, the names in them are not DISFA's
        (root / "Videos_LeftCamera").mkdir(parents=True)
        (root / "Videos_LeftCamera" / "SN001.avi").write_bytes(b"RIFF")
        (root / "ActionUnit_Labels" / "subject1").mkdir(parents=True)
    elif case == "the parent":
        root.mkdir()
        shutil.copytree(pristine, root / "DISFA")

    with pytest.raises(InputError) as err:
        ingest(wh, root)

    message = str(err.value)
    assert str(root) in message and "\n" not in message
    if case == "the parent":
        assert str(root / "DISFA") in message
    else:
        assert "Videos_LeftCamera/LeftVideoSN001_comp.avi" in message
        assert "ActionUnit_Labels/SN001/SN001_au1.txt" in message
    assert n_rows(wh, "images") == 0 and rejects(wh) == []


def test_bad_stride_is_a_config_error(root: Path, wh: Warehouse) -> None:
    with pytest.raises(ConfigError, match="stride"):
        ingest(wh, root, stride=0)


# ---- corrections at the source ---------------------------------------------------------------
def stored_labels(wh: Warehouse, video_id: str, au: int) -> dict[int, float]:
    rows = wh.sql(
        "SELECT i.frame_index, l.intensity FROM au_labels l JOIN images i USING (image_id) "
        f"WHERE i.video_id = '{video_id}' AND l.au = {au}"
    ).to_pylist()
    return {r["frame_index"]: r["intensity"] for r in rows}


@pytest.mark.parametrize("stride", [1, 3])
def test_edited_label_file_supersedes_the_stored_labels(root: Path, wh: Warehouse, stride: int) -> None:
    ingest(wh, root, stride=stride)
    path = disfa_label_path(root, "SN001", 4)
    changed = edit_labels(path, range(5, 25), lambda f: (read_labels(root, "SN001", 4)[f] + 1) % 6)
    kept = set(range(1, FRAMES + 1, stride))
    n_updated = len([f for f in range(5, 25) if f in kept])
    assert changed == 20

    again = ingest(wh, root, stride=stride)

    assert again.added == {"images": 0, "au_labels": 0, "rejects": 0}
    assert again.updated == {"au_labels": n_updated}
    assert f"labels updated: {n_updated}" in again.summary()
    truth = read_labels(root, "SN001", 4)
    assert stored_labels(wh, "SN001_left", 4) == {f: truth[f] for f in kept}
    assert n_rows(wh, "au_labels") == len(SUBJECTS) * len(kept) * N_AUS  # the view: newest only
    assert n_rows(wh, "au_labels_history") == len(SUBJECTS) * len(kept) * N_AUS + n_updated

    third = ingest(wh, root, stride=stride)
    assert third.added == {"images": 0, "au_labels": 0, "rejects": 0}
    assert third.updated.get("au_labels", 0) == 0 and "labels updated" not in third.summary()


def test_reingest_does_not_decode_a_stored_whole_video(root: Path, wh: Warehouse, monkeypatch) -> None:
    ingest(wh, root)
    truth = read_labels(root, "SN002", 1)
    assert edit_labels(disfa_label_path(root, "SN002", 1), range(1, 3), lambda f: (truth[f] + 1) % 6) == 2
    real = cv2.VideoCapture
    grabs: list[str] = []

    class Counting:
        def __init__(self, path: str) -> None:
            self.cap, self.path = real(path), path

        def grab(self) -> bool:
            grabs.append(self.path)
            return self.cap.grab()

        def __getattr__(self, name: str):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    again = ingest(wh, root)

    assert grabs == []
    assert (
        again.images_found == len(SUBJECTS) * FRAMES and len(set(again.image_ids)) == len(SUBJECTS) * FRAMES
    )
    assert again.added == {"images": 0, "au_labels": 0, "rejects": 0}
    assert again.updated == {"au_labels": 2}
    assert stored_labels(wh, "SN002_left", 1)[1] == (truth[1] + 1) % 6

    # A video with frames still to store is decoded: a finer stride adds the rest.
    assert ingest(wh, root, stride=1).added["images"] == 0
    finer = Warehouse(wh.home.parent / "finer")
    ingest(finer, root, stride=2)
    grabs.clear()
    assert ingest(finer, root).added["images"] == len(SUBJECTS) * FRAMES // 2
    assert len(grabs) > 0


def test_reingest_decodes_a_video_with_a_decode_reject_again(root: Path, wh: Warehouse) -> None:
    # With stride 2 every kept frame of the damaged video lands (1, 3, ..., 39 of 39 decoded),
    # yet the re-run must decode it to report the lost frame again, not take it for whole.
    lose_frame_21(disfa_video_path(root, "SN001", "left"))
    first = ingest(wh, root, stride=2)
    again = ingest(wh, root, stride=2)
    assert [r.reason for r in first.rejects] == [r.reason for r in again.rejects] == ["lost_frames"]
    assert again.added == {"images": 0, "au_labels": 0, "rejects": 0}
