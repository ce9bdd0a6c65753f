"""The `face_detector` asset through Dagster, in process, on the rendered demo data: ingest
(teachers' era), train the YOLO student, then ingest again and find the demo's faces with it."""

from __future__ import annotations

import pytest

from assets.resources import FACE_TRUTH_CSV
from labeling.detection.geometry import face_recall
from labeling.student.face_detector import STUDENT_ONNX, STUDENT_PT, truth_for
from labeling.student.settings import StudentDetectorSettings
from warehouse.settings import SETTINGS_FILE

pytestmark = pytest.mark.slow  # trains the YOLO student: left out of `make test-fast`

# From scratch (labeling.student.yolo's yolov8n recipe), 40 epochs found 30-60 % of the scenes'
# faces at the detector's 0.25 score floor (on the earlier 4-subject demo); the asset starts from
# the packaged COCO YOLO11n (conftest.FaceDetectorRoot: its budget).
TRUTH_MAP50_FLOOR = 0.8
# Recall at IoU 0.5 of every demo face, of the DISFA frames' and of the held-out subjects'.
RECALL_FLOOR = 0.95
# The scenes alone: their smallest faces are ~14 px at the student's 160 px, and a 20-epoch run
# misses a few (all in the held-out folder of 0-3 face scenes). It finds every DISFA face.
SCENES_RECALL_FLOOR = 0.85


@pytest.fixture(scope="module")
def trained(face_detector_root) -> dict:
    r = face_detector_root
    return {
        "home": r.home,
        "result": r.result,
        "seconds": r.seconds,
        "spec_before": r.spec_before,
        "spec_after": r.spec_after,
        "again": r.again,
        "epochs": r.EPOCHS,
        "imgsz": r.IMGSZ,
    }


def _metadata(result) -> dict:
    (mat,) = result.asset_materializations_for_node("face_detector")
    return {k: v.value for k, v in mat.metadata.items()}


def test_face_detector_trains_installs_and_becomes_the_default(trained):
    result, home = trained["result"], trained["home"]
    assert result.success, result.all_events
    meta = _metadata(result)
    print(
        f"\nface_detector: mAP50 {meta['map50_vs_teacher']:.3f} vs teacher, {meta['map50_vs_truth']:.3f} vs truth "
        f"on {meta['val_images']} held-out images ({meta['val_groups']}); {meta['train_images']} train, "
        f"{meta['epochs']} epochs, {meta['training_seconds']:.0f} s in the asset, job {trained['seconds']:.0f} s"
    )
    folder = home / "models" / "face_detector"
    assert (folder / STUDENT_PT).is_file() and (folder / STUDENT_ONNX).is_file()
    assert {p.name for p in folder.iterdir()} == {STUDENT_PT, STUDENT_ONNX, SETTINGS_FILE}, (
        "the work folder is left"
    )
    saved = StudentDetectorSettings.load(folder)
    epochs, imgsz = trained["epochs"], trained["imgsz"]
    assert (saved.epochs, saved.imgsz, saved.device, saved.init) == (epochs, imgsz, "cpu", "yolo11n-seg")
    assert meta["path"] == str(folder / STUDENT_PT)
    assert meta["images_by_source"] == {"disfa": 120, "scraped": meta["images_by_source"]["scraped"]}
    assert meta["train_images"] + meta["val_images"] == sum(meta["images_by_source"].values())
    assert meta["epochs"] == epochs and meta["device"] == "cpu" and len(meta["weights_sha256"]) == 64
    assert meta["map50_vs_teacher"] >= 0.8
    assert meta["map50_vs_truth"] >= TRUTH_MAP50_FLOOR
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"weights_load": True, "map50_vs_teacher_above_floor": True}
    assert trained["spec_before"] == "teachers"
    assert trained["spec_after"] == str(folder / STUDENT_PT)


def test_ingestion_with_the_student_finds_the_demo_faces(trained):
    from labeling.student.face_detector import select_training_images
    from warehouse import Warehouse

    assert all(r.success for r in trained["again"])
    home = trained["home"]
    meta = _metadata(trained["result"])
    wh = Warehouse(home)
    images = select_training_images(wh, disfa_stride=1, max_images=10**6)  # every image, with its group
    truth = truth_for(images, home / FACE_TRUTH_CSV)
    assert len(truth) == len(images) == sum(meta["images_by_source"].values())
    rows = wh.sql(
        "SELECT image_id, x1, y1, x2, y2 FROM detections WHERE label = 'face' AND detector = 'yolo:student' "
        f"AND weights_sha256 = '{meta['weights_sha256']}'"
    ).to_pylist()
    found: dict[str, list] = {}
    for r in rows:
        found.setdefault(r["image_id"], []).append((r["x1"], r["y1"], r["x2"], r["y2"]))
    held_out = {i["image_id"] for i in images if i["group"] in meta["val_groups"]}
    disfa = {i["image_id"] for i in images if i["source"] == "disfa"}
    scraped = {i["image_id"] for i in images if i["source"] == "scraped"}
    subsets = {  # name: (image ids, floor or None: printed only)
        "all": (set(truth), RECALL_FLOOR),
        "disfa": (disfa, RECALL_FLOOR),
        "held-out subjects": (disfa & held_out, RECALL_FLOOR),
        "scenes": (scraped, SCENES_RECALL_FLOOR),
        "held-out scenes": (scraped & held_out, None),
    }
    recalls, lines = {}, []
    for name, (ids, _) in subsets.items():
        recall, n = face_recall(found, {k: v for k, v in truth.items() if k in ids})
        recalls[name] = recall
        lines.append(f"{name} {recall:.3f} of {n} faces")
    # Scenes the generator drew no face in: the student finds none either.
    face_free = [k for k, v in truth.items() if not v]
    false_faces = sum(len(found.get(k, [])) for k in face_free)
    print(
        f"\nstudent recall at IoU 0.5 through the assets: {'; '.join(lines)}; "
        f"{false_faces} faces on {len(face_free)} face-free scenes"
    )
    assert all(recalls[name] >= floor for name, (_, floor) in subsets.items() if floor), lines
    assert face_free and false_faces == 0


def test_the_default_detector_finds_no_face_on_face_free_images(trained):
    import numpy as np

    from assets.resources import DetectorResource
    from ferlab.samples.scraped import background

    detector = DetectorResource(device="cpu").load(trained["home"])
    assert detector.name == "yolo:student"
    rng = np.random.default_rng(7)
    scenes = [background(rng, 640, 480).astype(np.uint8) for _ in range(12)]
    faces = [d for found in detector.detect(scenes) for d in found if d.label == "face"]
    assert faces == []


def test_nothing_to_train_on_fails_loudly(tmp_path, monkeypatch, face_detector_root):
    from dagster import DagsterInstance

    monkeypatch.setenv("FERLAB_HOME", str(tmp_path / "empty"))
    result = face_detector_root.execute(DagsterInstance.ephemeral(), "face_detector_job")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "no DISFA frames or scraped images" in str(failure.step_failure_data.error)
    assert not (tmp_path / "empty" / "models" / "face_detector" / STUDENT_PT).exists()
