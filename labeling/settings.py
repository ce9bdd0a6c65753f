"""The settings of the labeling runs, one frozen, validated object per run kind:

    StudentDetectorSettings   training the YOLO student face detector (labeling.face_detector)
    AutoLabelSettings         detecting and cropping faces of ingested images (labeling.autolabel)
    AnalyzeSettings           `ferlab analyze`: faces, tracks, AUs and emotions of a video (labeling.analyze)

Each is what the library functions, the Dagster config and the `ferlab` flags take; the flags
and the config are generated from the fields, so a field is declared once. A bad value is a
ConfigError naming the field (warehouse.settings.Settings). The student's settings are saved
beside the model it makes (`save`, settings.json).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from labeling.crops import MARGIN
from warehouse.settings import Settings

# What the student starts from: the packaged COCO YOLO11n-seg (the person teacher), whose
# backbone, neck and box head carry over to a YOLO11n detector; so the architecture is YOLO11n.
MODEL_YAML = "yolo11n.yaml"
INIT_PACKAGED = "yolo11n-seg"
INIT_SCRATCH = "scratch"


class StudentDetectorSettings(Settings):
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


class AutoLabelSettings(Settings):
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


class AnalyzeSettings(Settings):
    """How `ferlab analyze` (labeling.analyze) turns a video, image, folder or camera into one row per
    face per frame: the detector, the models, seed 004's averaging and minimum probability, the
    tracker. Saved beside the output (`<out>.settings.json`)."""

    detector: str = Field(
        "auto",
        min_length=1,
        description="auto (this data root's trained student, else YuNet) | yunet | teachers | a YOLO "
        ".pt/.onnx file",
    )
    au_model: str | None = Field(None, description="the AU model's id (unset: the production AU model)")
    emotion_model: str | None = Field(
        None, description="the emotion model's id (unset: the production emotion model)"
    )
    model_variant: Literal["fp32", "int8", "student"] = Field(
        "fp32",
        description="which form of both models runs (models.compact): fp32, int8 (model.int8.onnx, "
        "`ferlab export MODEL_ID --int8`) or student (the distilled one, `ferlab distill MODEL_ID`)",
    )
    average: int = Field(
        1, ge=1, description="probabilities averaged over a track's last N frames (seed 004); 1: none"
    )
    min_probability: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="below this (averaged) top probability the emotion is 'uncertain' (seed 004)",
    )
    stride: int = Field(1, ge=1, description="every N-th video frame")
    max_frames: int | None = Field(
        None, ge=1, description="stop after this many frames (a camera runs until Ctrl-C otherwise)"
    )
    batch_size: int = Field(
        16, ge=1, description="frames per detector call; their faces form one model batch"
    )
    margin: float = Field(
        MARGIN, ge=0.0, le=2.0, description="crop margin, each side, as a share of the box's longer side"
    )
    track_buffer: int = Field(
        30, ge=0, description="frames a face out of view keeps its track id (ByteTrack's track_buffer)"
    )
    match_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="ByteTrack's association threshold (1 - IoU cost, fused with the score)",
    )
    backend: Literal["onnx", "torch"] = Field("onnx", description="onnx (ONNX Runtime) or torch")
    device: str = Field(
        "auto", min_length=1, description="auto (cuda when present, else cpu) | cpu | cuda[:n]"
    )
