"""The settings of the labeling runs, one frozen, validated object per run kind:

    StudentDetectorSettings   training the YOLO student face detector (labeling.face_detector)
    AutoLabelSettings         detecting and cropping faces of ingested images (labeling.autolabel)

Each is what the library functions, the Dagster config and the `ferlab` flags take; the
flags are derived from the fields (`add_arguments`, `from_arguments`), so a field is declared
once. A bad value is a ConfigError naming the field. The student's settings are saved beside
the model it makes (`save`, settings.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labeling.crops import MARGIN
from warehouse.atomic import atomic_write_bytes
from warehouse.errors import ConfigError

SETTINGS_FILE = "settings.json"
# What the student starts from: the packaged COCO YOLO11n-seg (the person teacher), whose
# backbone, neck and box head carry over to a YOLO11n detector; so the architecture is YOLO11n.
MODEL_YAML = "yolo11n.yaml"
INIT_PACKAGED = "yolo11n-seg"
INIT_SCRATCH = "scratch"


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{type(self).__name__}: {problems}") from None

    def save(self, folder: str | Path) -> Path:
        """Write these settings as folder/settings.json (atomically); return its path."""
        path = Path(folder) / SETTINGS_FILE
        atomic_write_bytes(path, (self.model_dump_json(indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Settings saved by `save` (a settings.json or its folder). ConfigError when they no
        longer validate, OSError when the file cannot be read."""
        path = Path(path)
        if path.is_dir():
            path = path / SETTINGS_FILE
        return cls(**json.loads(path.read_text()))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One `--field-name` flag per field, with its type, default and description."""
        for name, info in cls.model_fields.items():
            kind = info.annotation if info.annotation in (int, float, str) else str
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=kind,
                default=info.default,
                help=f"{info.description} (default: {info.default})",
            )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Self:
        """The settings parsed by the flags of `add_arguments`. ConfigError on a bad value."""
        return cls(**{name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)})


class StudentDetectorSettings(_Settings):
    """How the YOLO student face detector is trained (labeling.face_detector, labeling.student)."""

    epochs: int = Field(30, ge=1, description="training epochs")
    imgsz: int = Field(320, ge=32, description="training (and inference) image size, px")
    batch: int = Field(16, ge=1, description="images per training step")
    max_images: int = Field(1000, ge=1, description="at most this many images, evenly spaced")
    disfa_stride: int = Field(8, ge=1, description="every n-th stored frame of each DISFA video")
    device: str = Field(
        "auto", min_length=1, description="auto (cuda when present, else cpu) | cpu | cuda[:n]"
    )
    model_yaml: str = Field(MODEL_YAML, description="the student's ultralytics architecture (.yaml)")
    init: str = Field(
        INIT_PACKAGED,
        description=f"what it starts from: {INIT_PACKAGED} (the packaged COCO person teacher), "
        f"{INIT_SCRATCH}, or a .pt file",
    )
    seed: int = Field(0, ge=0, description="training seed")

    @field_validator("model_yaml")
    @classmethod
    def _yaml(cls, value: str) -> str:
        if not value.endswith((".yaml", ".yml")):
            raise ValueError(f"an ultralytics model .yaml (e.g. {MODEL_YAML}), not {value!r}")
        return value

    @field_validator("init")
    @classmethod
    def _init(cls, value: str) -> str:
        if value not in (INIT_PACKAGED, INIT_SCRATCH) and not value.endswith(".pt"):
            raise ValueError(f"{INIT_PACKAGED!r}, {INIT_SCRATCH!r} or a .pt file, not {value!r}")
        return value


class AutoLabelSettings(_Settings):
    """How ingested images are auto-labeled: which detector, where, and how faces are cropped."""

    spec: str = Field(
        "auto",
        min_length=1,
        description="auto (this data root's trained student, else the teachers) | yunet | yolo | teachers | "
        "a YOLO .pt/.onnx file",
    )
    device: str = Field(
        "auto", min_length=1, description="auto (cuda when present, else cpu) | cpu | cuda[:n]"
    )
    batch_size: int = Field(16, ge=1, description="frames per detector call")
    margin: float = Field(
        MARGIN, ge=0.0, le=2.0, description="crop margin, each side, as a share of the box's longer side"
    )
