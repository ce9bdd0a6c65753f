"""The settings of the curation runs (labeling.curation.pseudo, labeling.curation.review): frozen, validated, the
`ferlab pseudo-label` / `ferlab review-queue` flags and the Dagster configs generated from the
fields. Kept free of torch so that building the CLI's flags stays fast."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from warehouse.settings import DEFAULT_DEVICE, Device, Settings

# Why the review queue holds a face (labeling.curation.review says what each means).
REVIEW_REASONS: tuple[str, ...] = (
    "between_thresholds",
    "weak_disagrees",
    "low_detection_score",
    "likely_mistake",
    "most_unique",
    "disagreement",
)


class PseudoLabelSettings(Settings):
    """How the production model pseudo-labels faces."""

    target_precision: float = Field(
        0.9, gt=0, lt=1, description="each side's precision on the out-of-fold predictions"
    )
    min_support: int = Field(
        10, ge=1, description="a side needs at least this many held-out faces beyond its threshold"
    )
    confidence: float = Field(
        0.8,
        ge=0,
        lt=1,
        description="a source's own cuts, chosen on its curated faces, must reach target_precision with this "
        "confidence (the lower Clopper-Pearson bound of their precision; 0: the measured precision), so cuts "
        "chosen on a few answers hold; the out-of-fold cuts, on the model's held-out faces, use the measured one",
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
    min_verified_faces: int = Field(
        50,
        ge=1,
        description="a source's faces get cuts of their own, chosen on its human-labeled faces, once it has "
        "this many; before that its pseudo labels are unverified (shown to curators, kept out of dataset "
        "versions) unless the model's held-out people came from that source",
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


class SemiSupervisedSettings(Settings):
    """Fewer human labels for the same AU model? Per subject-exclusive fold, split and label budget:
    the AU model on the labeled people's gold only, on that gold + its pseudo labels of the other
    training people (their gold hidden), and on every training person's gold (the ceiling)."""

    label_fractions: tuple[float, ...] = Field(
        (0.2, 0.4),
        min_length=1,
        description="label budgets: the share of each fold's training people labeled",
    )
    splits: int = Field(3, ge=1, description="seeded choices of the labeled people per budget")
    targets: Literal["hard", "soft"] = Field(
        "soft",
        description="hard: present / absent at the teacher's cuts, unknown between (masked); soft: the "
        "teacher's probabilities as targets",
    )
    smooth_frames: int = Field(
        9,
        ge=0,
        description="average the teacher's probabilities over this many frames of each video; 0/1: off",
    )
    person_norm: bool = Field(
        False,
        description="shift each video's teacher logits so that its median is the labeled frames' median "
        "(a person's own bias taken out before the cuts)",
    )
    teachers: Literal["single", "cross-fitted"] = Field(
        "single",
        description="single: the labeled-gold model teaches; cross-fitted: the mean of models each trained "
        "on the labeled people but one (at most 3 folds), cuts chosen on the people each never saw",
    )
    rounds: int = Field(1, ge=1, description="self-training rounds: each round's student teaches the next")
    target_precision: float = Field(
        0.9, gt=0, lt=1, description="hard targets: each side's precision on the teacher's validation frames"
    )
    min_support: int = Field(
        10, ge=1, description="hard targets: validation frames a side needs beyond its threshold"
    )

    @field_validator("label_fractions")
    @classmethod
    def _shares(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in fractions):
            raise ValueError(f"label budgets are shares strictly between 0 and 1, not {list(fractions)}")
        return tuple(sorted(set(fractions)))


class ActiveLearningSettings(Settings):
    """Does the review queue spend a curator's labels well? Per subject-exclusive fold and seed, a
    simulated curator answers the frames each strategy picks with their gold labels; the AU model
    is retrained after each round and scored on the held-out people."""

    strategies: tuple[Literal["queue", "uncertainty", "random"], ...] = Field(
        ("queue", "uncertainty", "random"), min_length=1, description="queue, uncertainty, random"
    )
    initial: int = Field(32, ge=2, description="random frames labeled before the first round")
    per_round: int = Field(32, ge=1, description="frames the curator labels per round")
    rounds: int = Field(5, ge=1, description="rounds of labeling and retraining")
    seeds: int = Field(3, ge=1, description="repeats with other initial frames and draws")
    target_precision: float = Field(0.9, gt=0, lt=1, description="queue: the pseudo-label cuts' precision")
    min_support: int = Field(3, ge=1, description="queue: validation frames a cut needs beyond it")
    unique_top: int = Field(
        0, ge=0, description="queue: the most unique frames queued per round (the curves: they cost labels)"
    )
    neighbours: int = Field(3, ge=1, description="queue: uniqueness is the distance to the k-th neighbour")
    diverse: bool = Field(
        True,
        description="queue: spread each round's picks over the faces (priority x distance to the faces "
        "picked before it) instead of the top of the queue",
    )
