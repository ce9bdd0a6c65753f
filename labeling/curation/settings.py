"""The settings of the curation runs (labeling.curation.pseudo, labeling.curation.review): frozen, validated, the
`ferlab pseudo-label` / `ferlab review-queue` flags and the Dagster configs generated from the
fields. Kept free of torch so that building the CLI's flags stays fast."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from warehouse.settings import DEFAULT_DEVICE, Device, Settings


class PseudoLabelSettings(Settings):
    """How the production model pseudo-labels faces."""

    target_precision: float = Field(
        0.9, gt=0, lt=1, description="each side's precision on the out-of-fold predictions"
    )
    min_support: int = Field(
        10, ge=1, description="a side needs at least this many held-out faces beyond its threshold"
    )
    batch_size: int = Field(64, ge=1, description="crops per inference batch")
    backend: Literal["onnx", "torch"] = Field("onnx", description="onnx (ONNX Runtime) or torch")
    device: Device = DEFAULT_DEVICE
    model_id: str | None = Field(
        None, description="the model to label with (unset: the task's production model)"
    )
    version: str | None = Field(
        None, description="the dataset version whose faces are labeled (unset: the latest)"
    )


class ReviewSettings(Settings):
    """What goes into the review queue."""

    target_precision: float = Field(0.9, gt=0, lt=1, description="the pseudo-label thresholds' precision")
    min_support: int = Field(10, ge=1, description="as the pseudo-labeler's")
    min_detection_score: float = Field(
        0.8, ge=0, le=1, description="faces detected below this score are queued"
    )
    mistake_threshold: float = Field(
        0.7, gt=0, le=1, description="label-vs-model disagreement queued from here"
    )
    unique_top: int = Field(20, ge=0, description="the most unique faces queued")
    neighbours: int = Field(3, ge=1, description="uniqueness: distance to the k-th nearest neighbour")
    batch_size: int = Field(64, ge=1, description="crops per inference batch")
    backend: Literal["onnx", "torch"] = Field("onnx", description="onnx (ONNX Runtime) or torch")
    device: Device = DEFAULT_DEVICE
    model_id: str | None = Field(None, description="unset: the task's production model")
    version: str | None = Field(None, description="unset: the latest dataset version")
    queue: str | None = Field(None, description="the queue's name (unset: <task>:<model id>)")
    brain: bool = Field(
        False,
        description="most_unique and (emotion) likely_mistake by FiftyOne Brain on our embeddings and "
        "probabilities (starts FiftyOne's database) instead of the numpy measures",
    )


class PseudoExperimentSettings(Settings):
    """Does pseudo-labeling help? Per fold, the gold-only model (the teacher) pseudo-labels the
    faces without a gold or human AU label; a second model trains on gold + those pseudo labels."""

    target_precision: float = Field(
        0.9, gt=0, lt=1, description="each side's precision on the teacher's validation people"
    )
    min_support: int = Field(
        10, ge=1, description="a side needs at least this many validation faces beyond its threshold"
    )
    max_unlabeled: int = Field(
        20000, ge=1, description="at most this many faces to pseudo-label (a fixed sample of the rest)"
    )
