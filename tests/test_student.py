"""Teacher -> student (labeling.student.yolo): the YOLO dataset the teachers' labels make, our
mAP@0.5, and (slow) a student trained from scratch on the demo data, offline, at the smallest
budget; `make quality` trains it in full and scores it on held-out subjects and scenes against the
teachers and the demo's ground truth. The .pt / ONNX checks use the suite's one trained student
(the face_detector asset's, conftest.face_detector_root)."""

from __future__ import annotations

import csv
import random
import re
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from labeling.detection.detectors import Detection, TeacherDetector, load_detector, packaged_person_detector
from labeling.detection.geometry import map50
from labeling.student.settings import StudentDetectorSettings
from labeling.student.yolo import (
    StudentReport,
    build_yolo_dataset,
    evaluate_map50,
    read_yolo_split,
    split_groups,
    teach_student,
)

# The quality run's settings (`make quality`): a few CPU minutes, and it still learns.
STUDENT_EPOCHS = 40
STUDENT_IMGSZ = 160
VIDEO_STRIDE = 8  # every 8th DISFA frame: 8 per subject of the "small" demo's 64
# The floor the slow test asserts against the demo's ground truth; see the test's docstring.
TRUTH_MAP50_FLOOR = 0.8


# ---- helpers --------------------------------------------------------------------------------
class FakeTeacher:
    """Returns the boxes it is given for each image (by the image's top-left pixel value)."""

    name = "fake-teacher"
    weights_sha256 = "0" * 64

    def __init__(self, boxes: dict[int, list[Detection]]):
        self.boxes = boxes
        self.calls: list[int] = []

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.calls.append(len(images))
        return [list(self.boxes.get(int(img[0, 0, 0]), [])) for img in images]


class FixedDetector:
    """A detector whose output per image is given (for mAP cases made by hand)."""

    name = "fixed"
    weights_sha256 = "0" * 64

    def __init__(self, outputs: list[list[Detection]]):
        self.outputs = outputs

    def detect(self, images):
        return [self.outputs[int(img[0, 0, 0])] for img in images]


def _image(key: int, w: int = 64, h: int = 48) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    img[0, 0] = key
    return img


def _face(x1, y1, x2, y2, score=0.9, label="face") -> Detection:
    return Detection(label, x1, y1, x2, y2, score)


# ---- dataset ----------------------------------------------------------------------------------
def test_split_groups_whole_groups_about_a_fifth_deterministic():
    counts = {f"subject-{k}": 5 + 3 * (k % 4) for k in range(12)}
    val = split_groups(counts)
    n_val = sum(counts[g] for g in val)
    assert val and val != set(counts)
    assert 0.12 <= n_val / sum(counts.values()) <= 0.32
    shuffled = dict(random.Random(1).sample(sorted(counts.items()), len(counts)))
    assert split_groups(shuffled) == val  # independent of input order
    assert split_groups({"big": 100, "small": 3}) == {"small"}
    assert len(split_groups({"a": 10, "b": 10})) == 1
    with pytest.raises(ValueError, match="at least 2 groups"):
        split_groups({"only": 10})


def test_build_yolo_dataset_layout_split_and_labels(tmp_path):
    # 20 images in 7 groups; image k's pixel (0, 0) is k, so the fake teacher knows it.
    groups = [f"g{k % 7}" for k in range(20)]
    images = [(f"img/{k:02d}.png", _image(k), g) for k, g in enumerate(groups)]
    # One image given as a file, to take the copy-the-JPEG path.
    jpg = tmp_path / "on_disk.jpg"
    cv2.imwrite(str(jpg), _image(20), [cv2.IMWRITE_JPEG_QUALITY, 100])
    images.append(("on-disk", jpg, "g3"))
    boxes = {
        0: [_face(8, 12, 24, 36), _face(-10, 0, 40, 100, 0.5, "person")],  # person clipped
        1: [_face(60, 40, 80, 60)],  # clipped to a 4x8 box
        2: [_face(70, 0, 90, 10)],  # wholly outside: dropped
    }
    teacher = FakeTeacher(boxes)
    out = tmp_path / "ds"
    data_yaml = build_yolo_dataset(images, teacher, out, batch_size=8)

    assert data_yaml == out.resolve() / "data.yaml"
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec == {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "face", 1: "person"},
    }
    assert Path(spec["path"]).is_absolute()
    assert teacher.calls == [8, 8, 5]

    with open(out / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == len(images)
    sides: dict[str, set[str]] = defaultdict(set)
    for row in manifest:
        sides[row["group"]].add(row["split"])
        stem = Path(row["file"]).stem
        assert (out / "images" / row["split"] / row["file"]).is_file()
        assert (out / "labels" / row["split"] / f"{stem}.txt").is_file()
    assert all(len(s) == 1 for s in sides.values()), "a group on both sides of the split"
    n_val = sum(r["split"] == "val" for r in manifest)
    assert 2 <= n_val <= 7  # about a fifth of 21, in whole groups of 3
    assert {p.stem for p in (out / "images").rglob("*.jpg")} == {
        p.stem for p in (out / "labels").rglob("*.txt")
    }
    assert not list((out / "images").rglob("*/*/*"))  # flat folders

    by_id = {r["image_id"]: r for r in manifest}
    assert re.fullmatch(r"[A-Za-z0-9._-]+", Path(by_id["img/00.png"]["file"]).stem)
    assert (out / "images" / by_id["on-disk"]["split"] / "on-disk.jpg").read_bytes() == jpg.read_bytes()

    def label_lines(image_id: str) -> list[str]:
        row = by_id[image_id]
        return (out / "labels" / row["split"] / f"{Path(row['file']).stem}.txt").read_text().splitlines()

    # 64x48 image: face (8, 12)-(24, 36) -> centre (16, 24), size 16x24
    assert label_lines("img/00.png") == [
        "0 0.250000 0.500000 0.250000 0.500000",
        "1 0.312500 0.500000 0.625000 1.000000",  # clipped to (0, 0)-(40, 48)
    ]
    assert label_lines("img/01.png") == ["0 0.968750 0.916667 0.062500 0.166667"]
    assert label_lines("img/02.png") == []
    assert label_lines("img/05.png") == []
    assert (by_id["img/00.png"]["n_face"], by_id["img/00.png"]["n_person"]) == ("1", "1")
    for path in (out / "labels").rglob("*.txt"):
        for line in path.read_text().splitlines():
            c, *xywh = line.split()
            assert c in ("0", "1") and len(xywh) == 4
            assert all(0.0 <= float(v) <= 1.0 for v in xywh)

    # read back in pixels
    paths, back = read_yolo_split(data_yaml, by_id["img/00.png"]["split"])
    got = back[[p.name for p in paths].index(by_id["img/00.png"]["file"])]
    assert got[0] == pytest.approx(("face", 8, 12, 24, 36))

    # rebuilding is deterministic and leaves nothing of the first build behind
    (out / "images" / "train" / "stale.jpg").write_bytes(b"x")
    build_yolo_dataset(images, FakeTeacher(boxes), out)
    with open(out / "manifest.csv") as f:
        assert list(csv.DictReader(f)) == manifest
    assert not (out / "images" / "train" / "stale.jpg").exists()


def test_build_yolo_dataset_rejects_duplicate_ids_and_one_group(tmp_path):
    teacher = FakeTeacher({})
    with pytest.raises(ValueError, match="duplicate"):
        build_yolo_dataset([("a", _image(0), "g1"), ("a", _image(1), "g2")], teacher, tmp_path / "d1")
    with pytest.raises(ValueError, match="at least 2 groups"):
        build_yolo_dataset([("a", _image(0), "g"), ("b", _image(1), "g")], teacher, tmp_path / "d2")


# ---- mAP@0.5 ----------------------------------------------------------------------------------
FACE_A = ("face", 10.0, 10.0, 50.0, 60.0)
FACE_B = ("face", 100.0, 20.0, 140.0, 70.0)


def test_map50_hand_made_cases():
    perfect = [[_face(*FACE_A[1:], 0.9), _face(*FACE_B[1:], 0.8)]]
    assert map50(perfect, [[FACE_A, FACE_B]]) == pytest.approx(1.0)
    # one of two faces found: recall stops at 0.5 at precision 1
    assert map50([[_face(*FACE_A[1:])]], [[FACE_A, FACE_B]]) == pytest.approx(0.5)
    # the right box with the wrong class: no face found (person is not in the truth)
    assert map50([[_face(*FACE_A[1:], label="person")]], [[FACE_A]]) == 0.0
    # nothing found
    assert map50([[]], [[FACE_A]]) == 0.0
    # a box at IoU < 0.5 is a miss; one slightly off (IoU > 0.5) a hit
    assert map50([[_face(30, 35, 70, 85)]], [[FACE_A]]) == 0.0
    assert map50([[_face(12, 12, 52, 62)]], [[FACE_A]]) == pytest.approx(1.0)
    # a duplicate box on a found face is a false positive: a lower-ranked one costs nothing
    assert map50([[_face(*FACE_A[1:], 0.9), _face(*FACE_A[1:], 0.3)]], [[FACE_A]]) == pytest.approx(1.0)
    # ranked above the hit, a false positive halves the precision there
    assert map50([[_face(200, 200, 240, 250, 0.9), _face(*FACE_A[1:], 0.5)]], [[FACE_A]]) == pytest.approx(
        0.5
    )
    # per class, mean over classes present: face perfect, person missed -> 0.5
    person = ("person", 0.0, 0.0, 150.0, 200.0)
    assert map50([[_face(*FACE_A[1:])]], [[FACE_A, person]]) == pytest.approx(0.5)
    # tuples work as predictions; boxes of another image do not match
    assert map50([[("face", *FACE_A[1:], 0.7)], []], [[FACE_A], [FACE_B]]) == pytest.approx(0.5)
    assert map50([[], [("face", *FACE_A[1:], 0.7)]], [[FACE_A], []]) == 0.0
    assert np.isnan(map50([[]], [[]]))
    with pytest.raises(ValueError):
        map50([[]], [[], []])


def test_evaluate_map50_runs_a_detector_over_images():
    outputs = [[_face(*FACE_A[1:])], [_face(*FACE_B[1:], label="person")], []]
    images = [_image(k, 200, 120) for k in range(3)]
    truth = [[FACE_A], [FACE_B], [FACE_A]]
    # image 0 found, image 1 wrong class, image 2 missed: recall 1/3 at precision 1
    assert evaluate_map50(FixedDetector(outputs), images, truth, batch_size=2) == pytest.approx(1 / 3)
    assert evaluate_map50(FixedDetector(outputs), images[:1], truth[:1]) == pytest.approx(1.0)


# ---- the slow part: a student trained on the demo data ---------------------------------------
def demo_images(demo: Path, stride: int = VIDEO_STRIDE):
    """(image id, image, group) for the demo's scenes (group: their folder) and every
    `stride`-th frame of its DISFA videos (group: the subject), and the true face boxes."""
    from labeling.detection.media import Frame, iter_frames

    with open(demo / "truth" / "faces.csv") as f:
        rows = [r for r in csv.DictReader(f) if not r["path"].startswith("fer2013")]
    boxes: dict[tuple[str, int | None], list] = defaultdict(list)
    for r in rows:
        key = (r["path"], int(r["frame"]) if r["frame"] else None)
        boxes[key].append(("face", float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"])))
    images, truth = [], {}
    for frame in iter_frames([demo / "scraped"]):  # the broken files come out as Rejects
        if isinstance(frame, Frame):
            path = Path(frame.source_uri)
            rel = str(path.relative_to(demo.resolve()))
            images.append((rel, path, path.parent.name))
            truth[rel] = boxes[(rel, None)]
    for video in sorted((demo / "disfa").rglob("*.avi")):
        subject = re.search(r"SN\d+", video.name).group(0)
        rel = str(video.relative_to(demo))
        for frame in iter_frames([video], stride=stride):
            if isinstance(frame, Frame):
                image_id = f"{subject}-frame{frame.frame_index:04d}"
                images.append((image_id, frame.image, subject))
                truth[image_id] = boxes[(rel, frame.frame_index)]
    return images, truth


class _NoNetwork:
    """Refuses and records every outgoing connection and name lookup (ultralytics & co)."""

    def __init__(self):
        self.attempts: list[str] = []

    def getaddrinfo(self, host, *a, **kw):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            self.attempts.append(f"lookup {host!r}")
            raise socket.gaierror(f"network disabled in tests: {host!r}")
        return _REAL_GETADDRINFO(host, *a, **kw)

    def connect(self, sock, address, *a, **kw):
        if not (isinstance(address, str) or sock.family == socket.AF_UNIX):
            self.attempts.append(repr(address))
            raise OSError(f"network disabled in tests: {address!r}")
        return _REAL_CONNECT(sock, address, *a, **kw)


_REAL_CONNECT = socket.socket.connect
_REAL_GETADDRINFO = socket.getaddrinfo


def _teach(root: Path, demo: Path, epochs: int, stride: int) -> tuple[StudentReport, dict, dict, list[str]]:
    """teach_student on the demo's scenes and every `stride`-th DISFA frame, the network cut off:
    (report, truth, timing, the connections something tried)."""
    images, truth = demo_images(demo, stride=stride)
    guard = _NoNetwork()
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", lambda s, *a, **kw: guard.connect(s, *a, **kw))
        mp.setattr(socket, "getaddrinfo", guard.getaddrinfo)
        # The person teacher at 320 px: the demo's persons fill the frame, and it is 4x cheaper.
        teacher = TeacherDetector(person=packaged_person_detector(device="cpu", imgsz=320), device="cpu")
        report = teach_student(
            images,
            teacher,
            root / "work",
            truth=truth,
            settings=StudentDetectorSettings(
                epochs=epochs,
                imgsz=STUDENT_IMGSZ,
                device="cpu",
                model_yaml="yolov8n.yaml",  # this test's recipe: a yolov8n from scratch
                init="scratch",
            ),
        )
    timing = {"teach_student_s": time.perf_counter() - started}
    return report, truth, timing, guard.attempts


def _check_offline_run(trained, epochs: int) -> None:
    report, truth, timing, attempts = trained
    print(
        f"\nstudent: mAP50 vs teacher {report.map50_vs_teacher:.3f}, vs truth {report.map50_vs_truth:.3f}; "
        f"{report.train_images} train / {report.val_images} val images, {report.epochs} epochs, "
        f"{report.seconds:.0f} s on {report.device}"
    )
    assert attempts == [], f"something tried to reach the network: {attempts}"
    assert report.weights.name == "best.pt" and report.weights.is_file()
    assert report.onnx.suffix == ".onnx" and report.onnx.is_file()
    assert report.device == "cpu" and report.epochs == epochs
    assert report.train_images + report.val_images == len(truth)
    assert 0.1 <= report.val_images / len(truth) <= 0.35


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_renders) -> tuple[StudentReport, dict, dict, list[str]]:
    """The whole path at the smallest budget: one epoch on every 16th DISFA frame and the scenes."""
    return _teach(tmp_path_factory.mktemp("student"), demo_renders.path("small", seed=0), epochs=1, stride=16)


@pytest.mark.slow
def test_student_trains_offline(trained):
    """Teachers' labels, the dataset, training, ONNX export and both mAPs, with no connection."""
    _check_offline_run(trained, epochs=1)
    report = trained[0]
    assert 0.0 <= report.map50_vs_teacher <= 1.0 and report.map50_vs_truth is not None


@pytest.mark.slow
@pytest.mark.quality
def test_student_trains_offline_and_beats_the_floor(tmp_path, demo_renders):
    """`make quality`: the student (yolov8n from scratch, 40 epochs at 160 px on ~150 images, no
    mosaic) against the teachers and the demo's ground truth on held-out subjects and scenes."""
    trained = _teach(tmp_path, demo_renders.path("small", seed=0), epochs=STUDENT_EPOCHS, stride=VIDEO_STRIDE)
    _check_offline_run(trained, epochs=STUDENT_EPOCHS)
    report = trained[0]
    # An untrained yolov8n scores ~0 here; the teachers' labels are learnable in the budget.
    assert report.map50_vs_teacher >= 0.8
    assert report.map50_vs_truth is not None and report.map50_vs_truth >= TRUTH_MAP50_FLOOR


@pytest.fixture(scope="module")
def student(face_detector_root) -> tuple[Path, Path]:
    """The suite's one trained YOLO student (the face_detector asset's): .pt and .onnx."""
    from labeling.student.face_detector import STUDENT_ONNX, STUDENT_PT, student_dir

    folder = student_dir(face_detector_root.home)
    return folder / STUDENT_PT, folder / STUDENT_ONNX


@pytest.fixture(scope="module")
def video_frame(demo_renders) -> np.ndarray:
    """A DISFA frame of the demo (one face, one person)."""
    from labeling.detection.media import Frame, iter_frames

    video = sorted((demo_renders.path("small", seed=0) / "disfa").rglob("*.avi"))[-1]
    return next(f.image for f in iter_frames([video], stride=16) if isinstance(f, Frame))


@pytest.mark.slow
def test_onnx_and_pt_give_the_same_boxes(student, video_frame):
    frame = video_frame
    side = min(frame.shape[:2])
    x0 = (frame.shape[1] - side) // 2
    square = np.ascontiguousarray(frame[:side, x0 : x0 + side])  # same letterbox for both
    found = {}
    for weights in student:
        det = load_detector(str(weights), device="cpu", imgsz=STUDENT_IMGSZ, conf=0.1)
        found[weights.suffix] = sorted(det.detect([square])[0], key=lambda d: -d.score)
    pt, onnx = found[".pt"], found[".onnx"]
    assert any(d.label == "face" for d in pt)
    assert [d.label for d in pt] == [d.label for d in onnx]
    for a, b in zip(pt, onnx):
        assert np.allclose([a.x1, a.y1, a.x2, a.y2], [b.x1, b.y1, b.x2, b.y2], atol=1.0)
        assert a.score == pytest.approx(b.score, abs=0.01)


@pytest.mark.slow
def test_load_detector_on_the_student(student, video_frame):
    weights = student[0]
    default = load_detector(str(weights), device="cpu")  # the platform's path
    assert default.class_map == {0: "face", 1: "person"}
    # At the size it learned (load_detector's default 640 shows it faces 4x larger).
    detector = load_detector(str(weights), device="cpu", imgsz=STUDENT_IMGSZ)
    dets = detector.detect([video_frame])[0]
    assert {d.label for d in dets} >= {"face"}
    assert all(d.label in ("face", "person") and d.x2 > d.x1 and d.y2 > d.y1 for d in dets)
