"""The rendered demo data: real formats, real-looking faces, visible expressions."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.demodata import BROKEN_SCRAPED, TRUTH_AUS, generate_demo_data
from warehouse import Warehouse
from warehouse.packaged_weights import weight_path
from warehouse.schemas import DISFA_AUS
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped


@pytest.fixture(scope="module")
def demo(demo_renders) -> Path:
    return demo_renders.path("small", seed=0)


def _truth(demo: Path) -> list[dict]:
    with open(demo / "truth" / "faces.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_files_pass_ingestion_with_the_expected_rows(demo, tmp_path):
    truth = _truth(demo)
    wh = Warehouse(tmp_path / "home")
    disfa = ingest_disfa(wh, demo / "disfa", show_progress=False)
    fer = ingest_fer2013(wh, demo / "fer2013.csv", show_progress=False)
    scraped = ingest_scraped(wh, demo / "scraped" / "batch-001", show_progress=False)
    frames = [r for r in truth if r["frame"]]
    fer_rows = [r for r in truth if r["path"].startswith("fer2013.csv")]
    scene_files = {p.relative_to(demo).as_posix() for p in (demo / "scraped").rglob("*.jpg")}
    broken = {f"scraped/batch-001/{name}" for name, _ in BROKEN_SCRAPED}
    assert not disfa.rejects and not fer.rejects
    assert disfa.images_found == len(frames)
    assert wh.count("au_labels") == len(frames) * len(DISFA_AUS)
    assert fer.images_found == len(fer_rows)
    assert scraped.images_found == len(scene_files - broken)
    assert sorted((r.reason, Path(r.source_uri).name) for r in scraped.rejects) == sorted(
        (reason, Path(name).name) for name, reason in BROKEN_SCRAPED
    )
    # The labels say what was rendered: DISFA intensities match the truth file frame by frame.
    rendered = {(r["path"], int(r["frame"])): float(r["au12"]) for r in frames}
    stored = wh.sql(
        "SELECT i.frame_index AS frame, a.intensity FROM au_labels a JOIN images i USING (image_id) "
        "WHERE a.au = 12 AND i.subject = 'SN001'"
    ).to_pylist()
    video = "disfa/Videos_LeftCamera/LeftVideoSN001_comp.avi"
    assert all(rendered[(video, r["frame"])] == r["intensity"] for r in stored)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _yunet_boxes(detector, image: np.ndarray) -> list[tuple[float, ...]]:
    detector.setInputSize((image.shape[1], image.shape[0]))
    _, faces = detector.detect(image)
    return [] if faces is None else [(f[0], f[1], f[0] + f[2], f[1] + f[3]) for f in faces]


def test_packaged_face_detector_finds_the_rendered_faces(demo):
    detector = cv2.FaceDetectorYN.create(
        str(weight_path("face_detection_yunet_2023mar.onnx")), "", (320, 320), 0.6, 0.3, 5000
    )
    by_image: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for r in _truth(demo):
        if r["path"].startswith("fer2013.csv"):
            continue  # 48x48 crops: FER-2013 images are faces already
        frame = int(r["frame"]) if r["frame"] else 0
        if frame and frame % 6:
            continue  # every 6th video frame is plenty
        by_image.setdefault((r["path"], frame), []).append(
            tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        )
    videos: dict[str, list[np.ndarray]] = {}
    found = total = 0
    for (path, frame), boxes in by_image.items():
        if frame:
            if path not in videos:
                cap = cv2.VideoCapture(str(demo / path))
                videos[path] = []
                while (ok := cap.read())[0]:
                    videos[path].append(ok[1])
            image = videos[path][frame - 1]
        else:
            image = cv2.imread(str(demo / path))
        detected = _yunet_boxes(detector, image)
        total += len(boxes)
        found += sum(any(_iou(b, d) >= 0.5 for d in detected) for b in boxes)
    recall = found / total
    print(f"YuNet recall at IoU 0.5 on {total} rendered faces: {recall:.3f}")
    assert total > 100 and recall >= 0.95


def test_same_seed_same_bytes(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a = digest(generate_demo_data(tmp_path / "a", seed=3, size="tiny"))
    b = digest(generate_demo_data(tmp_path / "b", seed=3, size="tiny"))
    assert a == b and len(a) > 20
    c = digest(generate_demo_data(tmp_path / "c", seed=4, size="tiny"))
    assert c != a


def test_truth_columns(demo):
    rows = _truth(demo)
    assert {f"au{au}" for au in TRUTH_AUS} <= set(rows[0])
    assert {r["emotion"] for r in rows} >= {"happy", "sad", "surprise", "angry", "fear", "disgust", "neutral"}
    assert (demo / "truth" / "contact_sheet.png").stat().st_size > 10_000
