"""Detection and cropping (labeling.detection.detectors, labeling.detection.detect, labeling.detection.crops) on the demo
data's rendered faces, scikit-image's real photos, and media broken on purpose."""

from __future__ import annotations

import csv
import errno
import math
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data

from ferlab.cli import run_detect_cli
from labeling.detection.crops import crop_faces, eye_angles
from labeling.detection.detect import detect_files
from labeling.detection.detectors import Detection, Detector, load_detector, map_class_names
from labeling.detection.geometry import clip_boxes
from labeling.detection.landmarks import DlibEyes
from labeling.detection.prefetch import prefetch
from labeling.detection.yolo_env import prepare_ultralytics_offline
from models.device import resolve_device
from warehouse.errors import ConfigError, InputError, StorageError
from warehouse.schemas import DETECTIONS

VIDEO = "disfa/Videos_LeftCamera/LeftVideoSN001_comp.avi"
VIDEO_FRAMES = 30  # the "tiny" demo's DISFA video


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(demo_renders) -> Path:
    return demo_renders.path("tiny", seed=0)


@pytest.fixture(scope="module")
def yunet() -> Detector:
    return load_detector("yunet")


@pytest.fixture(scope="module")
def teachers() -> Detector:
    return load_detector("teachers", device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _truth(demo: Path) -> list[dict]:
    """Rendered faces of the scenes and the video (FER-2013's 48 px crops have no scene)."""
    with open(demo / "truth" / "faces.csv") as f:
        return [r for r in csv.DictReader(f) if not r["path"].startswith("fer2013")]


def _angle(eyes: np.ndarray) -> float:
    return float(eye_angles(eyes[None])[0])


def _rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT), m


# ---- detectors ----------------------------------------------------------------------------
def test_yunet_recall_on_scenes_and_video(demo, yunet):
    table, frames, empty, rejects = detect_files(yunet, [demo / "scraped", demo / VIDEO], batch_size=8)
    assert table.schema.equals(DETECTIONS)
    truth = _truth(demo)
    found: dict[tuple[str, int | None], list[tuple[float, ...]]] = {}
    for r in table.to_pylist():
        found.setdefault((r["source_uri"], r["frame_index"]), []).append((r["x1"], r["y1"], r["x2"], r["y2"]))
    hits = 0
    for t in truth:
        key = (str((demo / t["path"]).resolve()), int(t["frame"]) if t["frame"] else None)
        box = tuple(float(t[k]) for k in ("x1", "y1", "x2", "y2"))
        hits += max((_iou(box, b) for b in found.get(key, [])), default=0.0) >= 0.5
    assert len(truth) >= 35 and hits / len(truth) >= 0.95, f"recall {hits}/{len(truth)}"

    from ferlab.demodata import BROKEN_SCRAPED

    broken = {str((demo / "scraped" / "batch-001" / name).resolve()): why for name, why in BROKEN_SCRAPED}
    scenes = [p for p in (demo / "scraped").rglob("*.jpg") if str(p.resolve()) not in broken]
    assert frames == VIDEO_FRAMES + len(scenes)
    assert {r.source_uri: r.reason for r in rejects} == broken  # the demo's own verdicts
    assert table.column("detector").unique().to_pylist() == ["yunet-2023mar"]
    assert table.column("weights_sha256").unique().to_pylist() == [yunet.weights_sha256]
    video_rows = [r for r in table.to_pylist() if r["source_uri"].endswith(".avi")]
    assert {r["frame_index"] for r in video_rows} == set(range(1, VIDEO_FRAMES + 1))
    assert all(r["frame_index"] is None for r in table.to_pylist() if r["source_uri"].endswith(".jpg"))
    assert empty == frames - len(found)


def test_no_faces_on_face_free_images(tmp_path, yunet):
    x = np.linspace(0, 255, 640, dtype=np.float32)
    images = {
        "coffee.png": cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR),
        "rocket.png": cv2.cvtColor(skimage.data.rocket(), cv2.COLOR_RGB2BGR),
        "cat.png": cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR),
        "ramp.png": np.repeat(np.tile(x, (480, 1))[..., None], 3, axis=2).astype(np.uint8),
        "radial.png": np.repeat(
            (255 * np.hypot(*np.meshgrid(x / 255 - 0.5, x[:480] / 255 - 0.5)))[..., None], 3, axis=2
        ).astype(np.uint8),
        "flat.png": np.full((360, 640, 3), 128, np.uint8),
    }
    for name, image in images.items():
        cv2.imwrite(str(tmp_path / name), image)
    table, frames, empty, rejects = detect_files(yunet, [tmp_path])
    assert (table.num_rows, frames, empty, rejects) == (0, len(images), len(images), [])


def test_teachers_find_face_and_person(tmp_path, teachers, astronaut):
    (found,) = teachers.detect([astronaut])
    faces = [d for d in found if d.label == "face"]
    persons = [d for d in found if d.label == "person"]
    assert len(faces) == 1 and len(persons) == 1
    face, person = faces[0], persons[0]
    assert person.score > 0.5 and (person.y2 - person.y1) > 0.8 * astronaut.shape[0]  # the upper body
    assert person.x1 <= face.x1 and person.y1 <= face.y1 and face.x2 <= person.x2 and face.y2 <= person.y2
    # each row names the model that made it
    cv2.imwrite(str(tmp_path / "astronaut.png"), astronaut)
    table, *_ = detect_files(teachers, [tmp_path / "astronaut.png"])
    by_label = {r["label"]: r["detector"] for r in table.to_pylist()}
    assert by_label == {"face": "yunet-2023mar", "person": "yolo11n-seg"}
    assert teachers.name == "teachers:yunet-2023mar+yolo11n-seg"


def test_video_stride_counts_frames(demo, yunet):
    for stride, expected in ((2, 15), (7, 5), (1, 30)):
        table, frames, empty, rejects = detect_files(yunet, [demo / VIDEO], stride=stride, batch_size=4)
        kept = set(range(1, VIDEO_FRAMES + 1, stride))
        assert frames == expected == len(kept) and not rejects
        assert set(table.column("frame_index").to_pylist()) == kept and empty == 0


def test_batch_size_does_not_change_results(demo, yunet):
    one, *_ = detect_files(yunet, [demo / "scraped"], batch_size=1)
    many, *_ = detect_files(yunet, [demo / "scraped"], batch_size=64)
    assert one.column("detection_id").to_pylist() == many.column("detection_id").to_pylist()


def test_broken_media_become_rejects(tmp_path, demo, yunet, astronaut):
    video = (demo / VIDEO).read_bytes()
    files = {
        "a_empty.jpg": b"",
        "b_readme.jpg": b"not an image, just text\n",
        "c_cut.avi": video[: len(video) // 2],
        "d_empty.avi": b"",
        "e_text.avi": b"RIFF but not really a video",
        "f_unknown.xyz": b"\x00" * 100,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cv2.imwrite(str(tmp_path / "g_good.jpg"), astronaut)
    paths = [tmp_path / n for n in sorted(files)] + [tmp_path / "g_good.jpg", tmp_path / "missing.png"]
    table, frames, _, rejects = detect_files(yunet, paths, batch_size=4)
    reasons = {Path(r.source_uri).name: r.reason for r in rejects}
    assert reasons == {
        "a_empty.jpg": "empty_file",
        "b_readme.jpg": "not_an_image",
        "c_cut.avi": "truncated_video",
        "d_empty.avi": "empty_file",
        "e_text.avi": "unreadable_video",
        "f_unknown.xyz": "unsupported_file",
        "missing.png": "missing_file",
    }
    cut = [r for r in rejects if r.reason == "truncated_video"][0]
    assert f"of the {VIDEO_FRAMES} frames" in cut.detail and cut.line is not None
    video_rows = [r for r in table.to_pylist() if r["source_uri"].endswith(".avi")]
    assert 5 < len(video_rows) < VIDEO_FRAMES and max(r["frame_index"] for r in video_rows) < cut.line
    assert frames == len(video_rows) + 1  # the run went on to the good image
    assert table.to_pylist()[-1]["source_uri"].endswith("g_good.jpg")


def test_prefetch_raises_errors_and_stops_early():
    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(prefetch(failing()))
    closed = []

    def endless():
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.append(True)

    for n in prefetch(endless(), depth=2):
        if n == 5:
            break
    assert closed == [True]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's ONNX exporter, not ours
def test_user_onnx_weights(tmp_path, astronaut):
    """A user's exported YOLO (.onnx, run by onnxruntime through ultralytics), offline."""
    import shutil

    from labeling.detection.yolo_env import prepare_ultralytics_offline
    from warehouse.packaged_weights import weight_path

    prepare_ultralytics_offline()
    from ultralytics import YOLO

    pt = shutil.copy(weight_path("yolo11n-seg.pt"), tmp_path / "mine.pt")
    onnx = YOLO(pt).export(format="onnx", imgsz=320, dynamic=True, verbose=False)
    detector = load_detector(str(onnx), device="cpu", imgsz=320)
    assert detector.name == "yolo:mine" and detector.class_map == {0: "person"}
    found = detector.detect([astronaut, astronaut[:200, :300]])
    assert [d.label for d in found[0]] == ["person"] and len(found) == 2


def test_load_detector_specs(tmp_path):
    with pytest.raises(ConfigError, match="unknown detector"):
        load_detector("retinaface")
    with pytest.raises(InputError, match="student.pt"):
        load_detector(str(tmp_path / "student.pt"))
    names = {0: "person", 1: "bicycle", 2: "Face"}
    assert map_class_names(names) == {0: "person", 2: "face"}
    assert map_class_names(names, ["person"]) == {0: "person"}


def test_ultralytics_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    monkeypatch.setenv("FERLAB_HOME", str(tmp_path))
    prepare_ultralytics_offline()  # twice is fine
    prepare_ultralytics_offline()
    cfg = Path(os.environ["YOLO_CONFIG_DIR"])
    assert cfg == tmp_path / "ultralytics"
    from ultralytics.utils import SETTINGS

    assert (cfg / "Ultralytics" / "Arial.ttf").is_file()
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert SETTINGS["sync"] is False


def _without_home(monkeypatch, tmp_path) -> Path:
    """No FERLAB_HOME, no YOLO_CONFIG_DIR: where ultralytics' settings go is ours to choose."""
    monkeypatch.delenv("FERLAB_HOME")
    monkeypatch.delenv("YOLO_CONFIG_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ferlab" / "ultralytics"


def test_ultralytics_settings_without_home_are_private(tmp_path, monkeypatch):
    """Not a predictable folder in the shared temp folder that another user can create first."""
    expected = _without_home(monkeypatch, tmp_path)
    prepare_ultralytics_offline()
    cfg = Path(os.environ["YOLO_CONFIG_DIR"])
    assert cfg == expected
    for folder in (cfg, cfg.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (cfg / "Ultralytics" / "Arial.ttf").is_file()
    prepare_ultralytics_offline()  # the folder it made itself passes its own check


@pytest.mark.parametrize("trap", ["world_writable", "group_writable_parent", "symlink", "other_owner"])
def test_a_settings_folder_another_user_controls_is_refused(tmp_path, monkeypatch, trap):
    expected = _without_home(monkeypatch, tmp_path)
    expected.parent.mkdir(parents=True, mode=0o700)
    if trap == "world_writable":
        expected.mkdir()
        expected.chmod(0o777)
    elif trap == "group_writable_parent":
        expected.mkdir(mode=0o700)
        expected.parent.chmod(0o770)
    elif trap == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        expected.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        expected.mkdir(mode=0o700)
        os.chown(expected, 65534, 65534)
    with pytest.raises(StorageError) as info:
        prepare_ultralytics_offline()
    message = str(info.value)
    assert "\n" not in message and str(expected.parent if "parent" in trap else expected) in message
    assert "YOLO_CONFIG_DIR" not in os.environ or os.environ["YOLO_CONFIG_DIR"] != str(expected)


def test_resolve_device_refuses_what_it_cannot_use():
    assert resolve_device("cpu") == "cpu"
    for device in ("tpu", "cuda:x", "cuda:99"):
        with pytest.raises(ConfigError, match="device"):
            resolve_device(device)


def test_run_detect_cli(tmp_path, demo, capsys):
    out = tmp_path / "detections.parquet"
    assert run_detect_cli([demo / VIDEO], "yunet", out, stride=3, batch_size=4) == 0
    assert pq.read_schema(out).equals(DETECTIONS) and pq.read_table(out).num_rows == 10
    assert "frames: 10, frames with no detection: 0" in capsys.readouterr().out
    assert run_detect_cli([demo / VIDEO], "yunet", None, stride=10, batch_size=4) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('"detection_id","image_id"') and len(captured.out.splitlines()) == 4
    assert "frames: 3, frames with no detection: 0" in captured.err
    with pytest.raises(ConfigError, match="unknown detector 'nope'"):
        run_detect_cli([demo / VIDEO], "nope", None, 1, 1)


def _no_detector_load(monkeypatch) -> None:
    """Fail the test when a run gets as far as loading a detector (seconds to minutes)."""

    def loaded(*args, **kwargs):
        raise AssertionError("the detector was loaded before the arguments were checked")

    import labeling.detection.detectors

    monkeypatch.setattr(labeling.detection.detectors, "load_detector", loaded)


@pytest.mark.parametrize("case", ["folder", "missing_folder", "under_a_file", "read_only_folder"])
def test_detect_out_that_cannot_be_written_fails_at_once(tmp_path, demo, monkeypatch, case):
    """Before: found only after the whole detection run, as a traceback."""
    (tmp_path / "a_file").write_text("x")
    out = {
        "folder": tmp_path,
        "missing_folder": tmp_path / "nope" / "d.parquet",
        "under_a_file": tmp_path / "a_file" / "d.parquet",
        "read_only_folder": tmp_path / "ro" / "d.parquet",
    }[case]
    if case == "read_only_folder":
        if os.geteuid() == 0:
            pytest.skip("root writes in a read-only folder")
        out.parent.mkdir(mode=0o500)
    _no_detector_load(monkeypatch)
    with pytest.raises(InputError) as info:
        run_detect_cli([demo / VIDEO], "yunet", out)
    message = str(info.value)
    assert "\n" not in message and str(out) in message


def test_detect_bad_arguments_fail_at_once(tmp_path, demo, monkeypatch):
    _no_detector_load(monkeypatch)
    with pytest.raises(ConfigError, match="stride"):
        run_detect_cli([demo / VIDEO], "yunet", None, stride=0)
    with pytest.raises(ConfigError, match="batch"):
        run_detect_cli([demo / VIDEO], "yunet", None, batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        run_detect_cli([demo / VIDEO], "yunet", None, device="tpu")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no media here")
    with pytest.raises(InputError, match="no image or video") as info:
        run_detect_cli([tmp_path / "empty", tmp_path / "missing.jpg"], "yunet", None)
    assert str(tmp_path / "empty") in str(info.value)


def test_detect_disk_full_is_one_clear_error(tmp_path, demo, monkeypatch):
    import labeling.detection.detect

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(labeling.detection.detect.pq, "write_table", full)
    out = tmp_path / "d.parquet"
    with pytest.raises(StorageError, match="No space left") as info:
        run_detect_cli([demo / VIDEO], "yunet", out, stride=10)
    assert str(out) in str(info.value) and not out.exists()
    assert not list(tmp_path.iterdir())  # no temp file left behind


# ---- crops --------------------------------------------------------------------------------
def _dots(crop_gray: np.ndarray) -> np.ndarray:
    """Centers of the two dark dots in a crop, left to right."""
    n, _, _, centers = cv2.connectedComponentsWithStats((crop_gray < 60).astype(np.uint8))
    assert n == 3, f"expected two dots, found {n - 1}"
    return centers[1:][np.argsort(centers[1:, 0])]


def test_eye_alignment_levels_the_eye_line():
    image = np.full((400, 400, 3), 200, np.uint8)
    theta = math.radians(25)  # eye line tilted 25 degrees, right side down (image y is down)
    c, half = np.array([200.0, 180.0]), 40.0
    eyes = np.array(
        [
            c - half * np.array([math.cos(theta), math.sin(theta)]),
            c + half * np.array([math.cos(theta), math.sin(theta)]),
        ]
    )
    for x, y in eyes:
        cv2.circle(image, (round(x), round(y)), 6, (0, 0, 0), -1, cv2.LINE_AA)
    landmarks = np.vstack([eyes[::-1], [[200, 220], [180, 250], [220, 250]]])  # either eye order works
    face = Detection("face", 140, 130, 260, 270, 0.9, landmarks)
    (aligned,), _ = crop_faces(image, [face])
    assert aligned.angle == pytest.approx(25, abs=0.01)
    in_crop = np.c_[eyes, np.ones(2)] @ aligned.matrix.T
    assert abs(in_crop[1, 1] - in_crop[0, 1]) < 1e-6  # exactly level by the geometry
    dots = _dots(cv2.cvtColor(aligned.rgb, cv2.COLOR_RGB2GRAY))
    assert abs(dots[1, 1] - dots[0, 1]) < 1.0  # and in the pixels
    (plain,), _ = crop_faces(image, [face], align=False)
    dots = _dots(cv2.cvtColor(plain.rgb, cv2.COLOR_RGB2GRAY))
    assert dots[1, 1] - dots[0, 1] > 30  # without alignment the tilt stays (~36 px)


def test_dlib_eyes_read_head_roll_that_yunet_misses(yunet, astronaut):
    rolled, _ = _rotate(astronaut, 20)  # counter-clockwise on screen: the eye line turns by -20
    (face,) = yunet.detect([rolled])[0]
    dlib_eyes = DlibEyes()
    upright = _angle(dlib_eyes(astronaut, np.array([[178, 63, 268, 176]]))[0])
    box = np.array([[face.x1, face.y1, face.x2, face.y2]])
    assert _angle(dlib_eyes(rolled, box)[0]) == pytest.approx(upright - 20, abs=2)
    assert abs(_angle(face.landmarks[:2]) - (upright - 20)) > 10  # YuNet's points stay nearly level
    (crop,), _ = crop_faces(rolled, [face], eyes=dlib_eyes)
    bgr = cv2.cvtColor(crop.rgb, cv2.COLOR_RGB2BGR)
    assert abs(_angle(dlib_eyes(bgr, np.array([[56, 56, 168, 168]]))[0])) < 2.5


def test_crops_sizes_and_border_clipping(astronaut, yunet):
    (face,) = yunet.detect([astronaut])[0]
    crops, rejects = crop_faces(astronaut, [face, Detection("person", 0, 0, 500, 500, 0.9)])
    assert not rejects and len(crops) == 1 and crops[0].index == 0
    assert crops[0].rgb.shape == (224, 224, 3) and crops[0].gray.shape == (48, 48)
    assert crops[0].rgb.dtype == np.uint8 and crops[0].gray.dtype == np.uint8
    # a face cut by the image's corner: the box is clipped and the crop's outside repeats the edge
    corner = Detection(
        "face", -60, -40, 80, 120, 0.8, np.array([[-20, 10], [40, 12], [10, 50], [0, 80], [30, 80]])
    )
    (crop,), rejects = crop_faces(astronaut, [corner])
    assert not rejects and crop.box == (0.0, 0.0, 80.0, 120.0)
    assert crop.quality["face_px"] == 80.0 and crop.rgb.shape == (224, 224, 3)
    assert np.allclose(clip_boxes(np.array([[-5.0, 3, 900, 600]]), 512, 512), [[0, 3, 512, 512]])


def test_degenerate_boxes_are_rejected(astronaut):
    boxes = [
        Detection("face", 100, 100, 100, 180, 0.9),  # zero width
        Detection("face", 600, 600, 700, 700, 0.9),  # wholly outside a 512 px image
        Detection("face", float("nan"), 10, 50, 60, 0.9),
        Detection("face", 200, 200, 150, 260, 0.9),  # x2 < x1
        Detection("face", 178, 63, 268, 176, 0.9),  # a real face, kept
    ]
    crops, rejects = crop_faces(astronaut, boxes, source_uri="astronaut.png", frame_index=3)
    assert [c.index for c in crops] == [4]
    assert [r.reason for r in rejects] == ["degenerate_box"] * 4
    assert all(r.stage == "crop" and r.source_uri == "astronaut.png" and r.line == 3 for r in rejects)


def test_quality_flags(astronaut, yunet):
    (face,) = yunet.detect([astronaut])[0]
    (sharp,), _ = crop_faces(astronaut, [face])
    assert not sharp.quality["too_small"] and not sharp.quality["too_blurry"]
    (blurred,), _ = crop_faces(cv2.GaussianBlur(astronaut, (0, 0), 6), [face])
    assert blurred.quality["too_blurry"] and blurred.quality["blur"] < sharp.quality["blur"] / 5
    small = cv2.resize(astronaut, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    (tiny,) = yunet.detect([small])[0]
    (tiny_crop,), _ = crop_faces(small, [tiny])
    assert tiny_crop.quality["too_small"] and tiny_crop.quality["face_px"] < 40
    (dark,), _ = crop_faces((astronaut * 0.3).astype(np.uint8), [face])
    assert dark.quality["brightness"] < 0.4 * sharp.quality["brightness"]
    (strict,), _ = crop_faces(astronaut, [face], min_face_px=100, blur_threshold=1e6)
    assert strict.quality["too_small"] and strict.quality["too_blurry"]


def test_ultralytics_leaves_the_threads_of_torch_and_of_child_processes_alone(tmp_path):
    """`import ultralytics` sets OMP_NUM_THREADS=1 when unset ("reduced CPU utilization"): torch
    imported after it, and every process started after it (Dagster's step workers, the CLI a
    test runs), then trains on one thread. Preparing ultralytics keeps the process' own setting."""
    import subprocess
    import sys

    script = (
        "import os, subprocess, sys\n"
        "from labeling.detection.yolo_env import prepare_ultralytics_offline\n"
        "prepare_ultralytics_offline()\n"
        "import torch\n"
        "child = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],"
        " capture_output=True, text=True).stdout.strip()\n"
        "print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads(), child)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["YOLO_CONFIG_DIR"] = str(tmp_path)
    clean = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["None", clean, clean], out.stdout
