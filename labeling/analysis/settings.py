"""How `ferlab analyze` runs (labeling.analysis.analyze): one frozen, validated object, whose
fields are the `ferlab analyze` flags and the `disfa_analysis` asset's config; saved beside the
output. A bad value is a ConfigError naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labeling.detection.crops import MARGIN
from labeling.detection.settings import Margin
from warehouse.settings import DEFAULT_DEVICE, Device, Settings


class AnalyzeSettings(Settings):
    """How `ferlab analyze` (labeling.analysis.analyze) turns a video, image, folder or camera into one row per
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
    margin: Margin = MARGIN
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
    device: Device = DEFAULT_DEVICE
