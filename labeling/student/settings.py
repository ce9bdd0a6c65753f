"""How the YOLO student face detector is trained (labeling.student): one frozen, validated
object, whose fields are the Dagster config and the `ferlab face-detector` flags; saved beside
the model it makes (`save`, settings.json). A bad value is a ConfigError naming the field."""

from __future__ import annotations

from pydantic import Field, field_validator

from warehouse.settings import DEFAULT_DEVICE, Device, Settings

# What the student starts from: the packaged COCO YOLO11n-seg (the person teacher), whose
# backbone, neck and box head carry over to a YOLO11n detector; so the architecture is YOLO11n.
MODEL_YAML = "yolo11n.yaml"
INIT_PACKAGED = "yolo11n-seg"
INIT_SCRATCH = "scratch"


class StudentDetectorSettings(Settings):
    """How the YOLO student face detector is trained (labeling.student.face_detector, labeling.student.yolo)."""

    epochs: int = Field(30, ge=1, description="training epochs")
    imgsz: int = Field(320, ge=32, description="training (and inference) image size, px")
    batch: int = Field(16, ge=1, description="images per training step")
    max_images: int = Field(1000, ge=1, description="at most this many images, evenly spaced")
    disfa_stride: int = Field(8, ge=1, description="every n-th stored frame of each DISFA video")
    device: Device = DEFAULT_DEVICE
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
