"""Teacher -> student: the teachers (YuNet faces + YOLO11n persons) label images, and a small
YOLO trained from scratch on their labels becomes the fast production detector (seed 004).

    data_yaml = build_yolo_dataset(images, load_detector("teachers"), work / "dataset")
    best_pt = train_student(data_yaml, work / "runs", epochs=30)
    onnx = export_yolo_onnx(best_pt)
    score = evaluate_map50(best_pt, val_images, val_boxes)   # our own mAP@0.5
    student = load_student(best_pt)   # = load_detector(str(best_pt), imgsz=<its training size>)

    report = teach_student(images, teacher, work, settings=settings)   # all of the above

`images` are (image_id, BGR array or image file, group) triples; the group is what must not
straddle the split (a subject, a video, a scraped batch), so the student is scored on images
of groups it never saw. Nothing here touches the network: ultralytics is prepared offline
(labeling.detection.yolo_env) and the model is built from its yaml, untrained or from packaged weights. No code runs from a
weights file: a .pt to start from or to export is checked first (labeling.detection.safe_weights), and
ultralytics' own loads go through its restricted loader.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from labeling.detection.detectors import LABELS, Detection, Detector, as_bgr
from labeling.detection.geometry import Box, map50
from labeling.student.settings import INIT_PACKAGED, INIT_SCRATCH, StudentDetectorSettings
from models.device import resolve_device
from warehouse.errors import ConfigError

CLASS_IDS: dict[str, int] = {label: i for i, label in enumerate(LABELS)}  # face 0, person 1
SPLITS = ("train", "val")
VAL_FRACTION = 0.2
IMAGE_SUFFIX = ".jpg"
MANIFEST = "manifest.csv"
# ultralytics train arguments that differ from its defaults; see train_student
SHORT_RUN_ARGS: dict[str, Any] = {
    "mosaic": 0.0,
    "warmup_epochs": 1.0,
    "optimizer": "AdamW",
    "lr0": 0.004,
    "val": False,
}
EVAL_CONF = 0.001  # score floor for mAP: the whole precision-recall curve, as detection benchmarks do

ImageInput = tuple[str, "np.ndarray | Path | str", str]


@dataclass
class StudentReport:
    weights: Path  # best.pt
    onnx: Path
    map50_vs_teacher: float  # held-out (val) images, against the teachers' labels
    map50_vs_truth: float | None  # the same images against ground truth, when given
    train_images: int
    val_images: int
    epochs: int  # epochs actually run
    seconds: float  # wall time of the whole run (labeling, training, export, scoring)
    device: str


# ---- dataset ----------------------------------------------------------------------------------
def _safe_name(image_id: str) -> str:
    """A file name for an image id: ids may be paths or URIs; keep them readable, and append
    a short hash whenever characters had to be replaced, so two ids never share a file."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"
    if name != image_id or len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha256(image_id.encode()).hexdigest()[:10]}"
    return name


def _group_order(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()


def split_groups(counts: Mapping[str, int], val_fraction: float = VAL_FRACTION) -> set[str]:
    """The groups that go to validation: about `val_fraction` of the images, whole groups only.

    Groups are taken in the order of their names' sha256 (deterministic, independent of the
    input order); one that would push validation past 1.5x its share is skipped. With a
    single group there is no split by group: ValueError."""
    if len(counts) < 2:
        raise ValueError(f"a split by group needs at least 2 groups, got {sorted(counts)}")
    order = sorted(counts, key=_group_order)
    target = val_fraction * sum(counts.values())
    val: set[str] = set()
    n = 0
    for group in order:
        if n >= target:
            break
        if n + counts[group] <= 1.5 * target:
            val.add(group)
            n += counts[group]
    if not val:  # every group is larger than the share: the smallest one
        val = {min(order, key=lambda g: counts[g])}
    return val


def _load_image(source: np.ndarray | Path | str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return as_bgr(source)
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {source}")
    return image


def _yolo_line(d: Detection, w: int, h: int) -> str | None:
    """`class cx cy w h`, normalized, the box clipped to the image; None when nothing is left."""
    if d.label not in CLASS_IDS:
        return None
    x1, x2 = min(max(d.x1, 0.0), w), min(max(d.x2, 0.0), w)
    y1, y2 = min(max(d.y1, 0.0), h), min(max(d.y2, 0.0), h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
    return f"{CLASS_IDS[d.label]} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


def build_yolo_dataset(
    images: Sequence[ImageInput],
    teacher: Detector,
    out: Path,
    batch_size: int = 16,
    val_fraction: float = VAL_FRACTION,
) -> Path:
    """Label `images` with `teacher` and write the ultralytics YOLO layout under `out`:

        out/images/{train,val}/<id>.jpg   out/labels/{train,val}/<id>.txt   out/data.yaml

    Label lines are `class cx cy w h` normalized to the image (0 face, 1 person); an image
    the teacher found nothing in gets an empty file (a background image). The split is by
    group (no group on both sides), about `val_fraction` to val. out/manifest.csv records
    each image's id, group, split, file and label counts. Returns data.yaml's path."""
    out = Path(out).resolve()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    names: dict[str, str] = {}
    counts: dict[str, int] = defaultdict(int)
    for image_id, _, group in images:
        name = _safe_name(image_id)
        if name in names.values() or image_id in names:
            raise ValueError(f"duplicate image id {image_id!r}")
        names[image_id] = name
        counts[group] += 1
    val_groups = split_groups(counts, val_fraction)

    for sub in ("images", "labels"):  # a rebuild must not keep images of an earlier run
        shutil.rmtree(out / sub, ignore_errors=True)
        for split in SPLITS:
            (out / sub / split).mkdir(parents=True)
    for stale in out.glob("labels/*.cache"):
        stale.unlink()

    rows = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = [_load_image(src) for _, src, _ in chunk]
        found = teacher.detect(pixels)
        for (image_id, src, group), image, dets in zip(chunk, pixels, found, strict=True):
            split = "val" if group in val_groups else "train"
            name = names[image_id]
            target = out / "images" / split / f"{name}{IMAGE_SUFFIX}"
            if isinstance(src, (str, Path)) and Path(src).suffix.lower() in (".jpg", ".jpeg"):
                shutil.copyfile(src, target)  # no second JPEG generation
            elif not cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f"cannot write {target}")
            h, w = image.shape[:2]
            lines = [line for d in dets if (line := _yolo_line(d, w, h))]
            (out / "labels" / split / f"{name}.txt").write_text("".join(f"{x}\n" for x in lines))
            per_class = [sum(line.startswith(f"{i} ") for line in lines) for i in range(len(LABELS))]
            rows.append([image_id, group, split, target.name, *per_class])

    with open(out / MANIFEST, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "group", "split", "file", *(f"n_{label}" for label in LABELS)])
        writer.writerows(rows)
    data_yaml = out / "data.yaml"
    spec = {
        "path": str(out),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(LABELS)),
    }
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data_yaml


def read_yolo_split(data_yaml: Path, split: str = "val") -> tuple[list[Path], list[list[Box]]]:
    """The images of one split and their labels, back in pixels (x1, y1, x2, y2)."""
    spec = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(spec["path"])
    names = {int(k): v for k, v in spec["names"].items()}
    paths = sorted((root / spec[split]).glob(f"*{IMAGE_SUFFIX}"))
    boxes: list[list[Box]] = []
    for path in paths:
        label_file = root / "labels" / split / f"{path.stem}.txt"
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        found: list[Box] = []
        for line in label_file.read_text().splitlines():
            c, cx, cy, bw, bh = line.split()
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            found.append((names[int(c)], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        boxes.append(found)
    return paths, boxes


# ---- training ---------------------------------------------------------------------------------
def init_weights(init: str) -> Path | None:
    """`init` as a weights file to start from: INIT_PACKAGED (the packaged YOLO11n-seg),
    INIT_SCRATCH (None) or a .pt path, checked here (labeling.detection.safe_weights) so that a file that
    is refused fails before the teachers label anything. ConfigError, InputError or
    UnsafeFileError otherwise; FileNotFoundError when set-up has not fetched the packaged file."""
    if init == INIT_SCRATCH:
        return None
    if init == INIT_PACKAGED:
        from labeling.detection.detectors import YOLO_PERSON_FILE
        from warehouse.packaged_weights import weight_path

        return weight_path(YOLO_PERSON_FILE)
    path = Path(init)
    if path.suffix != ".pt" or not path.is_file():
        raise ConfigError(f"init must be {INIT_PACKAGED!r}, {INIT_SCRATCH!r} or a .pt file, not {init!r}")
    from labeling.detection.safe_weights import check_checkpoint

    check_checkpoint(path)
    return path


def _ultralytics():
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline()
    from ultralytics import YOLO

    return YOLO


def train_student(
    data_yaml: Path,
    out_dir: Path,
    settings: StudentDetectorSettings | None = None,
    **train_args: Any,
) -> Path:
    """Train `settings.model_yaml` (built offline, started from `settings.init`: see
    init_weights) on `data_yaml` with the settings' epochs, imgsz, batch, device and seed;
    return its best.pt (out_dir/student/weights/best.pt), with the settings saved beside it
    (settings.json). Extra keywords go to ultralytics' `train` (augmentation, lr0, name, ...).
    ConfigError for an unusable device; the errors of init_weights.

    Defaults made for short runs from scratch (`SHORT_RUN_ARGS`, each overridable):
    - no mosaic: on the demo data, 40 epochs at 160 px reached mAP50 0.97-1.0 against the
      ground truth without it and 0.88-0.92 with it (mosaic shrinks the scenes' faces to a
      few pixels and shows the model tiles it never meets in production);
    - one warm-up epoch instead of three (three are a tenth of a 30-epoch run);
    - AdamW at lr0 0.004 (ultralytics' "auto" picks AdamW at 0.0017 for runs this short):
      at 30 epochs, 0.97 instead of 0.78 against the ground truth;
    - no per-epoch validation: it costs 10-15% more time on a small run, and picking the
      best epoch on the val images would flatter the held-out score; so best.pt is the last
      epoch's weights (ultralytics still validates it once at the end)."""
    settings = settings or StudentDetectorSettings()
    start = init_weights(settings.init)
    YOLO = _ultralytics()
    device = resolve_device(settings.device)
    out_dir = Path(out_dir).resolve()
    on_cpu = device == "cpu"
    args: dict[str, Any] = {
        "data": str(Path(data_yaml).resolve()),
        "epochs": settings.epochs,
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "device": device,
        "seed": settings.seed,
        "deterministic": True,
        "pretrained": str(start) if start else False,
        "amp": False,  # its check downloads yolo11n.pt; fp16 gains nothing on CPU anyway
        "plots": False,
        "workers": 0 if on_cpu else min(4, os.cpu_count() or 1),
        "project": str(out_dir),
        "name": "student",
        "exist_ok": True,
        "verbose": False,
        **SHORT_RUN_ARGS,
    }
    args.update(train_args)
    pretrained = args.get("pretrained")
    if isinstance(pretrained, (str, Path)) and Path(pretrained).suffix.lower() == ".pt":
        from labeling.detection.safe_weights import check_checkpoint

        check_checkpoint(pretrained)  # ultralytics would refuse it too, but after the labeling
    model = YOLO(settings.model_yaml)
    model.train(**args)
    best = Path(model.trainer.best)
    if not best.is_file():
        best = Path(model.trainer.last)
    settings.save(best.parent)
    return best


def epochs_run(weights: Path) -> int:
    """How many epochs the run behind `weights` completed (its results.csv)."""
    results = Path(weights).parent.parent / "results.csv"
    if not results.is_file():
        return 0
    with open(results) as f:
        return max(sum(1 for _ in f) - 1, 0)


def export_yolo_onnx(weights: Path, imgsz: int | None = None) -> Path:
    """weights.pt -> weights.onnx next to it (static input at the training size unless
    `imgsz`), for onnxruntime without torch; load it with load_detector(str(path))."""
    from labeling.detection.safe_weights import load_yolo

    model = load_yolo(weights)
    kw: dict[str, Any] = {"format": "onnx", "device": "cpu", "verbose": False}
    if imgsz:
        kw["imgsz"] = imgsz
    return Path(model.export(**kw))


def load_student(weights: Path | str, device: str = "auto", conf: float = 0.25, **kw: Any) -> Detector:
    """load_detector for a student (it runs at the size the student was trained at)."""
    from labeling.detection.detectors import load_detector

    return load_detector(str(weights), device=device, conf=conf, **kw)


# ---- mAP@0.5 ----------------------------------------------------------------------------------
def evaluate_map50(
    weights: Path | str | Detector,
    images: Sequence[np.ndarray],
    truth: Sequence[Iterable[Box]],
    device: str = "auto",
    imgsz: int | None = None,
    batch_size: int = 16,
) -> float:
    """mAP@0.5 of a detector (a .pt/.onnx file, run at its training size with a 0.001 score
    floor, or any Detector as it is) on `images` (BGR) against `truth` (per image, a list of
    (label, x1, y1, x2, y2)). Computed here (`map50`), not by ultralytics' val."""
    if len(images) != len(truth):
        raise ValueError(f"{len(images)} images but truth for {len(truth)}")
    if isinstance(weights, (str, Path)):
        kw = {"imgsz": imgsz} if imgsz else {}
        detector = load_student(weights, device=device, conf=EVAL_CONF, **kw)
    else:
        detector = weights
    # Batches of one image size only: ultralytics letterboxes a batch of mixed sizes to a
    # padded square but a batch of one size to the tightest rectangle, so mixing would make
    # a score depend on the batching.
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_shape[image.shape].append(i)
    predictions: list[list[Detection]] = [[] for _ in images]
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            for i, found in zip(chunk, detector.detect([images[i] for i in chunk]), strict=True):
                predictions[i] = found
    return map50(predictions, truth)


# ---- all of it --------------------------------------------------------------------------------
def teach_student(
    images: Sequence[ImageInput],
    teacher: Detector,
    work_dir: Path,
    truth: Mapping[str, Iterable[Box]] | None = None,
    settings: StudentDetectorSettings | None = None,
    **train_args: Any,
) -> StudentReport:
    """Label with the teacher, train the student, export it to ONNX, score it on the held-out
    groups: against the teacher's labels, and against `truth` when given (image id -> its true
    boxes; the held-out images with an entry are scored, so give an image with nothing to
    find an empty list). `settings` say what is trained how (train_student). Files:
    work_dir/dataset (YOLO layout), work_dir/runs/student (settings.json beside best.pt)."""
    settings = settings or StudentDetectorSettings()
    started = time.perf_counter()
    work_dir = Path(work_dir)
    init_weights(settings.init)  # a refused file fails before the teachers label anything
    device = resolve_device(settings.device)
    data_yaml = build_yolo_dataset(images, teacher, work_dir / "dataset")
    weights = train_student(data_yaml, work_dir / "runs", settings, **train_args)
    onnx = export_yolo_onnx(weights)

    val_paths, teacher_boxes = read_yolo_split(data_yaml, "val")
    val_images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in val_paths]
    student = load_student(weights, device=device, conf=EVAL_CONF)
    vs_teacher = evaluate_map50(student, val_images, teacher_boxes)
    vs_truth = None
    with open(data_yaml.parent / MANIFEST) as f:
        manifest = list(csv.DictReader(f))
    if truth is not None:
        by_file = {r["file"]: r["image_id"] for r in manifest}
        ids = [by_file[p.name] for p in val_paths]
        scored = [(img, list(truth[i])) for img, i in zip(val_images, ids) if i in truth]
        if scored:
            vs_truth = evaluate_map50(student, [s[0] for s in scored], [s[1] for s in scored])
    n_train = sum(r["split"] == "train" for r in manifest)
    return StudentReport(
        weights=weights,
        onnx=onnx,
        map50_vs_teacher=vs_teacher,
        map50_vs_truth=vs_truth,
        train_images=n_train,
        val_images=len(manifest) - n_train,
        epochs=epochs_run(weights) or settings.epochs,
        seconds=time.perf_counter() - started,
        device=device,
    )
