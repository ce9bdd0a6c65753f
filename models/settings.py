"""One settings object per training run kind, validated once, never changed, saved beside the model
it made (`run.json`) and loaded back equal. The Dagster `Config` classes and the `ferlab train`
flags are generated from these fields, so a setting is declared here and nowhere else.

    settings = AUTrainingSettings(loss="pr", finetune_epochs=3)   # ConfigError on a bad value
    run = train_model(wh, version, settings)
    faster = settings.replace(image_size=112)                     # a new, validated object

Defaults follow the seeds (the papers listed in the README): MobileNetV2 with the packaged ImageNet weights at
224 px, head-only training (Adam 1e-3, early stopping) then fine-tuning (Adam 1e-5), batch 64,
L2 1e-4; AU models scored by subject-exclusive 3-fold, emotion models by the version's own
train / val / test split (FER-2013's Usage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from models.losses import LOSSES, Criterion, emotion_class_weights, positive_weight
from models.networks import ARCHITECTURES, BACKBONE_INPUT, DEFAULT_WEIGHTS, NATIVE_INPUT, ModelConfig
from models.tasks import TASKS, AUTask, Task
from warehouse.errors import ConfigError
from warehouse.schemas import SEED_AUS
from warehouse.settings import DEFAULT_DEVICE, Device, Settings

Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]
AULoss = Literal[tuple(LOSSES)]  # type: ignore[valid-type]


class TrainingSettings(Settings):
    """What every training run takes; a subclass per task adds its own fields and defaults."""

    kind: ClassVar[str]  # the task name; the key of SETTINGS

    architecture: Architecture = Field(
        "mobilenet_v2",
        description="mobilenet_v2 (packaged ImageNet weights), mobilenet_v1, densenet121, densenet201 "
        "(random init unless weights names a file), fer2013_cnn (seed 003's CNN, 48 px gray, from scratch)",
    )
    weights: str | None = Field(
        None,
        description="unset: the architecture's own (packaged ImageNet for mobilenet_v2, random init for the "
        'others); "packaged": the packaged ImageNet file (mobilenet_v2 only, else an error); "": random init; '
        "else the path of a state dict",
    )
    image_size: int | None = Field(
        None, ge=8, description="input size in px; unset: the architecture's (224; 48 for fer2013_cnn)"
    )
    alpha: float = Field(1.0, gt=0, description="MobileNet width multiplier (1.0 with the packaged weights)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of the transfer head")
    folds: int = Field(3, ge=0, description="subject-exclusive folds; 0 = the version's train/val/test split")
    refit: bool = Field(False, description="train the production model on all data after cross-validation")
    batch_size: int = Field(64, ge=2, description="images per training batch")
    head_epochs: int = Field(
        50, ge=1, description="stage 1 (head only, backbone frozen): at most this many epochs"
    )
    head_lr: float = Field(1e-3, gt=0, description="stage 1 learning rate (Adam)")
    finetune_epochs: int = Field(
        5, ge=0, description="stage 2 (fine-tuning) epochs of a transfer model; 0 skips it"
    )
    finetune_blocks: int = Field(
        -1, ge=-1, description="stage 2 trains the backbone's last N blocks; -1: all"
    )
    finetune_lr: float = Field(1e-5, gt=0, description="stage 2 learning rate (the seeds': Adam 1e-5)")
    scratch_epochs: int = Field(
        20, ge=1, description="epochs of a network trained from scratch (fer2013_cnn)"
    )
    scratch_lr: float = Field(1e-3, gt=0, description="learning rate from scratch (seed 003: Adam 1e-3)")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay (seed 004)")
    patience: int = Field(
        10, ge=1, description="early stopping: epochs without a better validation loss before stopping"
    )
    plateau_patience: int = Field(10, ge=0, description="epochs without improvement before the lr is cut")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="lr factor on a plateau (seed 004: 0.5)")
    augment: bool = Field(True, description="flip, zoom-out and half-face join on training batches")
    degrade: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of each augmented training batch degraded to look like the sources the model "
        "labels but never trains on (FER-2013's 48 px gray crops, small faces in scraped photos): gray, "
        "down-scaled to 40-64 px and back, brightness/contrast jitter; 0: none (needs augment)",
    )
    device: Device = DEFAULT_DEVICE
    amp: bool = Field(True, description="float16 autocast on CUDA")
    seed: int = Field(
        0, ge=0, description="seed of initialisation, shuffling, augmentation, validation split"
    )

    @model_validator(mode="after")
    def _network_is_buildable(self) -> TrainingSettings:
        try:
            self.network()
        except ValueError as e:
            raise ValueError(str(e)) from None
        return self

    # ---- derived, never stored ------------------------------------------------------------------
    @property
    def task(self) -> Task:
        """What the run learns (labels, loss, metrics, report sections)."""
        return TASKS[self.kind]

    @property
    def protocol(self) -> str:
        """ "<k>-fold" (subject-exclusive cross-validation) or "holdout" (the version's split)."""
        return f"{self.folds}-fold" if self.folds > 0 else "holdout"

    @property
    def loss_name(self) -> str:
        """The loss, short (part of the model id)."""
        return "ce"

    @property
    def loss_description(self) -> str:
        """The loss, for reports and model_runs."""
        return "cross-entropy"

    def criterion(self, train_targets: np.ndarray, device: torch.device) -> Criterion:
        """The training loss these settings ask for, weighted from the training targets where asked
        (the task's `targets` of the training faces).

        Raises:
            ConfigError: the loss cannot train on these targets.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no training loss")

    def network(self) -> ModelConfig:
        """The network these settings train (what checkpoints store to rebuild it).

        Raises:
            ValueError: the architecture cannot take these settings (input size, weights, alpha).
        """
        size, channels = NATIVE_INPUT.get(self.architecture, BACKBONE_INPUT)
        weights = DEFAULT_WEIGHTS.get(self.architecture, "") if self.weights is None else self.weights
        return ModelConfig(
            task=self.kind,
            architecture=self.architecture,
            labels=self.task.labels,
            image_size=size if self.image_size is None else self.image_size,
            channels=channels,
            alpha=self.alpha,
            dropout=self.dropout,
            weights=weights,
        )

    # ---- copies and files -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: {"kind": ..., "settings": {field: value}} (what run.json holds)."""
        return {"kind": self.kind, "settings": self.model_dump(mode="json")}


class AUTrainingSettings(TrainingSettings):
    """An Action Unit model: the seeds' AUs, one sigmoid each, subject-exclusive k-fold."""

    kind: ClassVar[str] = "au"

    aus: tuple[int, ...] = Field(
        SEED_AUS, min_length=1, description="the AUs to learn (seed 000's 8 DISFA AUs)"
    )
    loss: AULoss = Field("bce", description="bce, lsep or pr (the precision-recall loss), seed 000")
    pos_weight: bool = Field(False, description="bce: weight positives by negatives/positives per AU")
    folds: int = Field(3, ge=2, description="subject-exclusive folds (seed 000: 3)")
    headline: Literal["avg_f1", "avg_f1_pooled"] = Field(
        "avg_f1",
        description="the figure a model is judged and promoted by: avg_f1 (the seeds' protocol: F1 per "
        "fold, mean over folds, a fold without positives of an AU counting 0) or avg_f1_pooled (one F1 "
        "per AU over every fold's held-out faces)",
    )
    threshold_prior: float = Field(
        0.0,
        ge=0,
        description="pull each AU's validation threshold toward 0.5 as if this many positives voted for it "
        "(0: the threshold of maximum validation F1, the seeds'; an AU without validation positives then "
        "predicts none)",
    )

    @field_validator("aus")
    @classmethod
    def _distinct_positive(cls, aus: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(aus)) != len(aus) or min(aus) < 1:
            raise ValueError("AUs must be distinct positive numbers")
        return aus

    @property
    def task(self) -> AUTask:
        return AUTask(self.aus, self.threshold_prior, self.headline)

    @property
    def loss_name(self) -> str:
        return self.loss

    @property
    def loss_description(self) -> str:
        return self.loss

    def criterion(self, train_targets: np.ndarray, device: torch.device) -> Criterion:
        if self.loss != "bce" and np.isnan(train_targets).any():
            raise ConfigError(
                f"loss {self.loss} cannot train on faces with unknown AUs (partial pseudo labels); use bce"
            )
        if self.loss == "bce" and self.pos_weight:
            pw = torch.tensor(positive_weight(train_targets), dtype=torch.float32, device=device)
            return lambda logits, y: LOSSES["bce"](logits.float(), y, pos_weight=pw)
        loss = LOSSES[self.loss]
        return lambda logits, y: loss(logits.float(), y)


class EmotionTrainingSettings(TrainingSettings):
    """A 7-class emotion model: softmax head, seed 004's class weights, the version's split."""

    kind: ClassVar[str] = "emotion"

    folds: int = Field(
        0, ge=0, description="0 = the version's train/val/test split (FER-2013's Usage); k >= 2 = k-fold"
    )
    class_weight_mu: float | None = Field(
        1.0, gt=0, description="seed 004's class weights with this mu; unset: unweighted cross-entropy"
    )

    @field_validator("folds")
    @classmethod
    def _not_one_fold(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("1 fold tests on no held-out group: use 0 (the version's split) or k >= 2")
        return folds

    @property
    def loss_description(self) -> str:
        return "cross-entropy" + (" (class-weighted)" if self.class_weight_mu is not None else "")

    def criterion(self, train_targets: np.ndarray, device: torch.device) -> Criterion:
        weight = None
        if self.class_weight_mu is not None:
            counts = np.bincount(train_targets, minlength=len(self.task.labels))
            weight = emotion_class_weights(np.maximum(counts, 1).tolist(), mu=self.class_weight_mu)
            weight = weight.to(device)
        return lambda logits, y: F.cross_entropy(logits.float(), y, weight=weight)


SETTINGS: dict[str, type[TrainingSettings]] = {
    s.kind: s for s in (AUTrainingSettings, EmotionTrainingSettings)
}


def settings_from_dict(data: dict[str, Any]) -> TrainingSettings:
    """The settings `TrainingSettings.to_dict` wrote.

    Raises:
        ConfigError: an unknown kind, or settings that no longer validate.
    """
    kind = data.get("kind")
    if kind not in SETTINGS:
        raise ConfigError(f"training settings of unknown kind {kind!r}; known: {sorted(SETTINGS)}")
    return SETTINGS[kind](**data["settings"])


def load_settings(run_json: Path) -> TrainingSettings:
    """The settings saved in a model's run.json.

    Raises:
        FileNotFoundError: no such file. ConfigError: as `settings_from_dict`.
    """
    return settings_from_dict(json.loads(Path(run_json).read_text())["settings"])
