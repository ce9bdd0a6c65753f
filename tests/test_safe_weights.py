"""No code from a weights file (labeling.detection.safe_weights, issue 9 point 1): a .pt whose pickle
calls anything outside a YOLO model's classes is refused before a byte of it is unpickled,
ultralytics' own loader refuses it too, garbage is one clear error naming the file, and the
files the platform really loads (the packaged YOLO11n-seg, a trained student) still load."""

from __future__ import annotations

import copy
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from labeling.detection.detectors import load_detector
from warehouse.errors import InputError, UnsafeFileError


class _Evil:
    """Unpickling it runs `touch <marker>`: the repro of the issue."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {self.marker}')",))


def _evil_pt(
    folder: Path, name: str = "evil.pt", payload: type = _Evil, protocol: int = 2
) -> tuple[Path, Path]:
    marker = folder / "PWNED"
    path = folder / name
    torch.save({"model": payload(marker)}, path, pickle_protocol=protocol)
    return path, marker


def _one_line(exc: pytest.ExceptionInfo | BaseException) -> str:
    message = str(exc.value if isinstance(exc, pytest.ExceptionInfo) else exc)
    assert message and "\n" not in message, message
    return message


def _load_error(path: Path) -> BaseException | None:
    """What loading `path` as a detector raises (None if it loads)."""
    try:
        load_detector(str(path), device="cpu")
    except Exception as exc:  # the caller asserts what it must be, after checking the marker
        return exc
    return None


# ---- code in a pickle ---------------------------------------------------------------------
def test_a_pickle_calling_os_system_runs_nothing_and_is_refused(tmp_path):
    path, marker = _evil_pt(tmp_path)
    error = _load_error(path)
    assert not marker.exists(), "the pickle's command ran"
    assert isinstance(error, UnsafeFileError), repr(error)
    message = _one_line(error)
    assert str(path) in message and "os.system" in message and "ONNX" in message


def test_stack_global_pickles_are_read_too(tmp_path):
    """Protocol 4 names a global with STACK_GLOBAL (module and name taken from the stack)."""
    path, marker = _evil_pt(tmp_path, payload=_EvilEval, protocol=4)
    error = _load_error(path)
    assert not marker.exists(), "the pickle's command ran"
    assert isinstance(error, UnsafeFileError), repr(error)
    assert "builtins.eval" in _one_line(error)


def test_ultralytics_own_loader_is_restricted(tmp_path):
    """Loads made inside ultralytics that the platform does not make itself (training's
    `pretrained=`, the trainer's final validation) skip our check: ultralytics' restricted
    loader must refuse the file on its own."""
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline()
    from ultralytics import YOLO

    path, marker = _evil_pt(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - whatever ultralytics raises; the point is the marker
        YOLO(str(path))
    assert not marker.exists()


def test_pickle_globals_reads_every_protocol_without_running_it(tmp_path):
    from labeling.detection.safe_weights import pickle_globals

    marker = tmp_path / "PWNED"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps([OrderedDict(a=1), _Evil(marker), _Evil(marker)], protocol=protocol)
        assert pickle_globals(data) == ["collections.OrderedDict", "posix.system"], protocol
    assert not marker.exists()


def test_refused_names_are_cleaned_for_one_line(tmp_path):
    """A global's name comes from the file: control characters must not reach the terminal."""
    from labeling.detection.safe_weights import check_checkpoint

    path = tmp_path / "weird.pt"
    body = b"\x80\x02c" + b"posix\nsys\x1b[2Jtem\n" + b"q\x00."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("weird/data.pkl", body)
    with pytest.raises(UnsafeFileError) as info:
        check_checkpoint(path)
    assert "\x1b" not in _one_line(info)


# ---- garbage ------------------------------------------------------------------------------
def _packaged_pt() -> Path:
    from warehouse.packaged_weights import weight_path

    return weight_path("yolo11n-seg.pt")


def _zip_without_pickle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _state_dict_only() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.nn.Conv2d(3, 4, 1).state_dict(), buf)
    return buf.getvalue()


GARBAGE = {
    "random": lambda: np.random.default_rng(0).bytes(4096),
    "text": lambda: b"these are not weights\n" * 10,
    "empty": lambda: b"",
    "truncated": lambda: _packaged_pt().read_bytes()[:300_000],
    "zip_without_pickle": _zip_without_pickle,
    "state_dict_only": _state_dict_only,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_pt_is_one_clear_error(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(GARBAGE[kind]())
    with pytest.raises(InputError) as info:
        load_detector(str(path), device="cpu")
    assert str(path) in _one_line(info)


def test_garbage_onnx_is_one_clear_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError) as info:
        load_detector(str(path), device="cpu")
    assert str(path) in _one_line(info)


# ---- what must still load -----------------------------------------------------------------
def test_the_packaged_yolo_still_loads():
    from labeling.detection.safe_weights import check_checkpoint

    check_checkpoint(_packaged_pt())
    detector = load_detector("yolo", device="cpu")
    assert detector.class_map == {0: "person"}
    assert detector.detect([np.zeros((64, 64, 3), np.uint8)]) == [[]]


def test_a_student_checkpoint_still_loads(tmp_path):
    """A student as ultralytics' trainer writes it (the EMA model in fp16, the train args, numpy
    scalars among the metrics), without the minutes a real training takes."""
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline()
    import ultralytics
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml").model
    model.names = {i: f"class{i}" for i in range(80)} | {0: "face", 1: "person"}
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": None,
        "ema": copy.deepcopy(model).half(),
        "updates": 12,
        "optimizer": None,
        "train_args": {
            "imgsz": 160,
            "epochs": 2,
            "data": str(tmp_path / "data.yaml"),
            "model": "yolov8n.yaml",
        },
        "train_metrics": {"metrics/mAP50(B)": np.float64(0.5), "fitness": np.float64(0.4)},
        "train_results": {"epoch": [1.0, 2.0]},
        "date": "2025-01-01T00:00:00",
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    path = tmp_path / "student.pt"
    torch.save(ckpt, path)
    detector = load_detector(str(path), device="cpu")
    assert detector.class_map == {0: "face", 1: "person"} and detector.imgsz == 160
    assert len(detector.detect([np.zeros((96, 128, 3), np.uint8)])) == 1
