"""Face and person detectors behind one interface, so the platform can swap YuNet, the
packaged YOLO11n, a trained YOLO student or a user's weights file without other changes
(and a team that cannot use AGPL code can drop ultralytics entirely).

    det = load_detector("teachers")             # YuNet faces + packaged YOLO11n-seg persons
    det = load_detector("runs/student/best.pt")  # any ultralytics .pt / .onnx file
    per_image = det.detect([bgr1, bgr2])        # list[list[Detection]]

Every detector names itself (`name`) and the sha256 of its weights, recorded with each
detection so a label can always be traced to the exact model that made it. A .pt file is
checked before it is unpickled and loaded without running code from it (labeling.detection.safe_weights);
a detector that cannot load is a FerlabError (InputError, ConfigError, UnsafeFileError).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from models.device import resolve_device
from warehouse.errors import ConfigError, InputError
from warehouse.hashing import sha256_file, stable_id

LABELS: tuple[str, ...] = ("face", "person")
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YOLO_PERSON_FILE = "yolo11n-seg.pt"


@dataclass(slots=True)
class Detection:
    """One box in image pixels (x2, y2 exclusive edges, as the models give them)."""

    label: str  # "face" | "person"
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    # (5, 2): right eye, left eye (the subject's), nose tip, right and left mouth corner
    landmarks: np.ndarray | None = None
    # The model that made it, when a detector merges several (TeacherDetector); else empty
    # and the caller records the detector's own name and hash.
    detector: str = ""
    weights_sha256: str = ""


@runtime_checkable
class Detector(Protocol):
    name: str
    weights_sha256: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """BGR uint8 images in; per image, its detections."""
        ...


def _packaged(name: str) -> Path:
    from warehouse.packaged_weights import weight_path

    return weight_path(name)


# ---- YuNet (OpenCV) -------------------------------------------------------------------------
def yunet_model(
    weights: str | Path | None = None,
    input_size: tuple[int, int] = (320, 320),
    score_threshold: float = 0.6,
    nms_threshold: float = 0.3,
    top_k: int = 5000,
    backend: int = cv2.dnn.DNN_BACKEND_DEFAULT,
    target: int = cv2.dnn.DNN_TARGET_CPU,
):
    """OpenCV's YuNet (cv2.FaceDetectorYN) from `weights`, default the packaged file: the one
    place it is loaded (YuNetDetector, the demo generator). FileNotFoundError when set-up has
    not fetched the packaged file; cv2.error for a file OpenCV cannot read."""
    path = Path(weights) if weights else _packaged(YUNET_FILE)
    return cv2.FaceDetectorYN.create(
        str(path), "", input_size, score_threshold, nms_threshold, top_k, backend, target
    )


class YuNetDetector:
    """OpenCV's YuNet face detector (the face teacher): fast on CPU, 5 landmarks per face.

    OpenCV's pip wheels have no CUDA, so it runs on the CPU whatever `device` says unless
    OpenCV itself was built with CUDA."""

    def __init__(
        self,
        weights: str | Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        device: str = "auto",
        max_side: int | None = None,
    ):
        self.weights = Path(weights) if weights else _packaged(YUNET_FILE)
        self.weights_sha256 = sha256_file(self.weights)
        stem = self.weights.stem.removeprefix("face_detection_")
        self.name = stem.replace("_", "-") if stem.startswith("yunet") else f"yunet:{stem}"
        self.score_threshold = score_threshold
        self.max_side = max_side  # downscale larger images first: YuNet's cost grows with pixels
        backend, target = cv2.dnn.DNN_BACKEND_DEFAULT, cv2.dnn.DNN_TARGET_CPU
        if device in ("cuda", "auto") and cv2.cuda.getCudaEnabledDeviceCount() > 0:
            backend, target = cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA
        self.device = "cuda" if target == cv2.dnn.DNN_TARGET_CUDA else "cpu"
        self._net = yunet_model(
            self.weights, (320, 320), score_threshold, nms_threshold, top_k, backend, target
        )
        self._size: tuple[int, int] = (320, 320)

    def _detect_one(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            h, w = image.shape[:2]
        if (w, h) != self._size:  # re-sizing the net is cheap, but skip it for video frames
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, rows = self._net.detect(image)
        if rows is None:
            return []
        # rows: x, y, w, h, 5 landmarks (x, y), score; in the (maybe downscaled) input's pixels
        geometry = rows[:, :14].astype(np.float64) / scale
        scores = rows[:, 14].astype(np.float64).tolist()
        landmarks = geometry[:, 4:14].reshape(-1, 5, 2)
        return [
            Detection("face", x, y, x + bw, y + bh, s, lm)
            for (x, y, bw, bh), s, lm in zip(geometry[:, :4].tolist(), scores, landmarks)
        ]

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [self._detect_one(as_bgr(img)) for img in images]


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Gray or BGRA in, 3-channel BGR out (what both model families expect)."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


# ---- Ultralytics YOLO -----------------------------------------------------------------------
def map_class_names(names: dict[int, str], wanted: Iterable[str] = LABELS) -> dict[int, str]:
    """Model class id -> our label, for the classes we use: COCO "person" -> person, a class
    named "face" -> face (case-insensitive); others are not ours and are left out."""
    wanted = set(wanted)
    unknown = wanted - set(LABELS)
    if unknown:
        raise ConfigError(f"unknown labels {sorted(unknown)}; known: {LABELS}")
    return {int(i): n.lower() for i, n in names.items() if n.lower() in wanted}


def trained_imgsz(weights: Path, model) -> int | None:
    """The input size an ultralytics model was trained at: its checkpoint's train args (.pt,
    already loaded by ultralytics) or the exported ONNX file's metadata."""
    if weights.suffix.lower() == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
        size = session.get_modelmeta().custom_metadata_map.get("imgsz", "")
        values = [int(v) for v in re.findall(r"\d+", size)]
        return max(values) if values else None
    size = ((getattr(model, "ckpt", None) or {}).get("train_args") or {}).get("imgsz")
    if isinstance(size, list | tuple):
        size = max(size)
    return int(size) if size else None


class UltralyticsDetector:
    """Any ultralytics detection/segmentation weights file (.pt, or an exported .onnx)."""

    def __init__(
        self,
        weights: str | Path,
        device: str = "auto",
        classes: Iterable[str] = LABELS,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int | None = None,
        half: bool | None = None,
        name: str | None = None,
    ):
        from labeling.detection.safe_weights import load_yolo

        self.weights = Path(weights)
        if not self.weights.is_file():
            raise InputError(
                f"{self.weights}: no such weights file; give a YOLO .pt or .onnx file, or yunet, yolo, teachers"
            )
        self.device = resolve_device(device)
        self.weights_sha256 = sha256_file(self.weights)
        self.name = name or f"yolo:{self.weights.stem}"
        self.model = load_yolo(self.weights)
        self.class_map = map_class_names(self.model.names, classes)
        if not self.class_map:
            raise InputError(
                f"{self.weights}: no class named {sorted(set(classes))} in this model; "
                f"its classes: {sorted(self.model.names.values())[:20]}"
            )
        # The size it was trained at: a student trained at 160 px shown 640 px frames sees faces
        # 4x larger than it learned and finds mostly spurious boxes.
        self.conf, self.iou, self.imgsz = conf, iou, imgsz or trained_imgsz(self.weights, self.model) or 640
        # fp16 halves GPU time for the same boxes; CPUs gain nothing from it
        self.half = self.device.startswith("cuda") if half is None else half

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        results = self.model.predict(
            [as_bgr(img) for img in images],  # numpy input is BGR to ultralytics, as to OpenCV
            imgsz=self.imgsz,
            conf=self.conf,
            iou=self.iou,
            classes=sorted(self.class_map),
            device=self.device,
            verbose=False,
            # `half` is deprecated in this ultralytics; `quantize=16` is its replacement
            **({"quantize": 16} if self.half else {}),
        )
        return [self._boxes(r) for r in results]

    def _boxes(self, result) -> list[Detection]:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy().astype(np.float64)
        score = boxes.conf.cpu().numpy().astype(np.float64)
        cls = boxes.cls.cpu().numpy().astype(np.int64)
        return [
            Detection(self.class_map[c], b[0], b[1], b[2], b[3], s)
            for b, s, c in zip(xyxy.tolist(), score.tolist(), cls.tolist())
            if c in self.class_map
        ]


# ---- teachers -------------------------------------------------------------------------------
class TeacherDetector:
    """The auto-labeling teachers: YuNet for faces, the packaged YOLO11n-seg for persons.
    Each detection names the model that made it (Detection.detector / weights_sha256)."""

    def __init__(
        self,
        face: YuNetDetector | None = None,
        person: UltralyticsDetector | None = None,
        device: str = "auto",
    ):
        self.face = face or YuNetDetector(device=device)
        self.person = person or packaged_person_detector(device=device)
        self.name = f"teachers:{self.face.name}+{self.person.name}"
        self.weights_sha256 = stable_id(self.face.weights_sha256, self.person.weights_sha256)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        merged = []
        for faces, persons in zip(self.face.detect(images), self.person.detect(images)):
            for d in faces:
                d.detector, d.weights_sha256 = self.face.name, self.face.weights_sha256
            for d in persons:
                d.detector, d.weights_sha256 = self.person.name, self.person.weights_sha256
            merged.append(faces + persons)
        return merged


def packaged_person_detector(device: str = "auto", **kw) -> UltralyticsDetector:
    """The official YOLO11n-seg (COCO) that ships in a package, persons only."""
    kw.setdefault("classes", ("person",))
    return UltralyticsDetector(_packaged(YOLO_PERSON_FILE), device=device, name="yolo11n-seg", **kw)


def load_detector(spec: str = "teachers", device: str = "auto", **kw) -> Detector:
    """ "yunet" | "yolo" (packaged YOLO11n persons) | "teachers" | a path to a .pt/.onnx file.
    Extra keywords go to the detector's constructor (thresholds, imgsz, classes, ...)."""
    if spec == "yunet":
        return YuNetDetector(device=device, **kw)
    if spec == "yolo":
        return packaged_person_detector(device=device, **kw)
    if spec == "teachers":
        return TeacherDetector(device=device, **kw)
    if Path(spec).suffix.lower() in (".pt", ".onnx"):
        return UltralyticsDetector(spec, device=device, **kw)
    raise ConfigError(f"unknown detector {spec!r}: use yunet, yolo, teachers or a .pt/.onnx file")
