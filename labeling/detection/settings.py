"""How ingested images are auto-labeled (labeling.detection.autolabel): one frozen, validated
object, whose fields are the Dagster config (assets.resources.DetectorResource) and the
`ferlab autolabel` flags. A bad value is a ConfigError naming the field."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from labeling.detection.crops import MARGIN
from warehouse.settings import DEFAULT_DEVICE, Device, Settings

# The crop margin of every run kind that crops faces, declared once (default: MARGIN).
Margin = Annotated[
    float, Field(ge=0.0, le=2.0, description="crop margin, each side, as a share of the box's longer side")
]


class AutoLabelSettings(Settings):
    """How ingested images are auto-labeled: which detector, where, and how faces are cropped."""

    spec: str = Field(
        "auto",
        min_length=1,
        description="auto (this data root's trained student, else the teachers) | yunet | yolo | teachers | "
        "a YOLO .pt/.onnx file",
    )
    device: Device = DEFAULT_DEVICE
    batch_size: int = Field(16, ge=1, description="frames per detector call")
    # A chunk's rows are held until they are stored: this bounds both memory and what a killed run loses.
    commit_every: int = Field(
        2048, ge=1, description="images per commit: the rows are stored, and a killed run resumes, per chunk"
    )
    margin: Margin = MARGIN
