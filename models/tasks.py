"""What a model learns, as a type: one class per task, holding everything that differs between
tasks (labels and targets from the manifest, output activation, decision thresholds, metric rows,
headline metric, trivial baseline, published figures, report sections, where its labels are
stored and labeled). Shared code asks the task instead of comparing its name; adding a task is
adding one subclass of `Task` to `TASKS`. The training loss belongs to the settings that hold its
fields (`models.settings.TrainingSettings.criterion`): this module imports no settings.

    task = get_task("au")               # AUTask(aus=SEED_AUS); a model's id and files say its task
    prob = task.probabilities(logits)   # sigmoid per AU; EmotionTask: softmax over the classes
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from models import render
from models.evaluation import (
    Row,
    Rows,
    all_present_avg_f1,
    majority_accuracy,
    multiclass_fold_rows,
    multilabel_fold_rows,
    pooled_multilabel_rows,
)
from models.metrics import choose_thresholds
from models.predictions import FoldPredictions
from warehouse.errors import ConfigError
from warehouse.schemas import EMOTIONS, SEED_AUS


class Task(ABC):
    """A prediction task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # the registry key; also the first part of a model id and its folder
    headline: ClassVar[str]  # the eval_metrics metric a model of this task is judged by
    headline_name: ClassVar[str]  # how reports name it
    fold_metric: ClassVar[str]  # the metric of one fold's held-out faces (models.compact's tables)
    min_outputs: ClassVar[int]  # the fewest labels a model of this task can have
    baseline_description: ClassVar[str]  # what `trivial_baseline` measures
    published_baselines: ClassVar[tuple[render.Baseline, ...]]  # (method, figure in %, note)
    label_table: ClassVar[str]  # the warehouse table of its labels (human, gold, weak, pseudo)
    source_column: ClassVar[str]  # the dataset-version manifest column naming its label's source
    labelstudio_control: ClassVar[str]  # the Label Studio control (Choices name) of its labels
    # the eval_metrics metrics of the per-label table (Dagster metadata), as (metric, column name)
    per_label_columns: ClassVar[tuple[tuple[str, str], ...]]

    @property
    @abstractmethod
    def labels(self) -> list[str]:
        """The model's outputs, in order."""

    @abstractmethod
    def select_rows(self, manifest: pa.Table) -> pa.Table:
        """The dataset-version manifest rows that carry this task's labels.

        Raises:
            ValueError: the manifest lacks a column the task needs.
        """

    @abstractmethod
    def targets(self, rows: pa.Table) -> np.ndarray:
        """Training targets of `select_rows`' rows, in `labels` order."""

    @abstractmethod
    def probabilities(self, logits: Tensor) -> Tensor:
        """The model's output activation (what ONNX exports and reports score)."""

    @abstractmethod
    def soft_target_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Knowledge distillation's loss of the student's logits against the teacher's, both
        softened by the temperature, x T^2 (so its gradients keep their scale as T changes)."""

    @abstractmethod
    def decisions(self, prob: np.ndarray) -> np.ndarray:
        """What a model decides from its probabilities (one value per sample, or per sample and
        label), for how often two models decide alike."""

    @abstractmethod
    def true_labels(self, targets: np.ndarray) -> np.ndarray:
        """Targets in the form evaluation takes (`FoldPredictions.y_true`)."""

    def thresholds(self, val_targets: np.ndarray, val_prob: Callable[[], np.ndarray]) -> np.ndarray | None:
        """Decision thresholds chosen on validation data (`val_prob()` predicts it, only when the
        task needs it), or None where the task has none."""
        return None

    @abstractmethod
    def fold_rows(self, fold: FoldPredictions) -> list[Row]:
        """eval_metrics rows of one fold (see `models.evaluation`)."""

    def pooled_rows(self, folds: Sequence[FoldPredictions]) -> list[Row]:
        """fold=None rows computed over all folds' predictions together (beyond mean ± std)."""
        return []

    @abstractmethod
    def trivial_baseline(self, folds: Sequence[FoldPredictions]) -> float:
        """The headline metric of a model that learned nothing, on the same held-out data."""

    @abstractmethod
    def report_sections(
        self, doc: render.Doc, folds: Sequence[FoldPredictions], r: Rows, plots: render.Plots
    ) -> None:
        """The task's own report sections (between the header and the folds)."""


@dataclass(frozen=True)
class AUTask(Task):
    """Action Units: multi-label, one sigmoid per AU, per-AU thresholds chosen on validation data,
    judged by Avg.F1 (mean F1 over the AUs, the seeds' metric)."""

    aus: tuple[int, ...] = SEED_AUS
    threshold_prior: float = 0.0  # see models.metrics.choose_thresholds(prior=)
    headline: str = "avg_f1"  # type: ignore[misc]  # avg_f1 (per-fold mean, the seeds') or avg_f1_pooled

    name: ClassVar[str] = "au"
    label_table: ClassVar[str] = "au_labels"
    source_column: ClassVar[str] = "au_source"
    labelstudio_control: ClassVar[str] = "aus"
    headline_name: ClassVar[str] = "Avg.F1"
    fold_metric: ClassVar[str] = "avg_f1"
    min_outputs: ClassVar[int] = 1
    baseline_description: ClassVar[str] = "Avg.F1 of calling every AU present"
    per_label_columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("precision_pooled", "precision"),
        ("recall_pooled", "recall"),
        ("f1_pooled", "f1"),
        ("f1_all_present", "f1 always present"),
        ("f1", "f1 mean over folds"),
    )
    published_baselines: ClassVar[tuple[render.Baseline, ...]] = (
        ("EAC-Net", 48.5, "DISFA Avg.F1 (8 AUs), as cited by seeds 000/001"),
        ("JAA-Net", 56.0, "DISFA Avg.F1 (8 AUs), as cited by seeds 000/001 ('about 56')"),
        ("Seeds' transfer-learning CNNs (lowest)", 60.8, "DISFA Avg.F1, seeds 000/001/002: range 60.8-64.7"),
        (
            "Seeds' transfer-learning CNNs (highest)",
            64.7,
            "DISFA Avg.F1, seeds 000/001/002: DenseNet-201 / MobileNet-v1 best",
        ),
        ("ME-GraphAU", 63.1, "DISFA Avg.F1, published state of the art"),
        ("AU-Net", 66.1, "DISFA Avg.F1, published state of the art"),
    )

    @property
    def labels(self) -> list[str]:
        return [f"AU{au}" for au in self.aus]

    @property
    def columns(self) -> list[str]:
        """The manifest columns of the AUs."""
        return [f"au{au}" for au in self.aus]

    def select_rows(self, manifest: pa.Table) -> pa.Table:
        missing = [c for c in self.columns if c not in manifest.column_names]
        if missing:
            raise ValueError(f"the manifest has no columns {missing}; AUs it knows: {manifest.column_names}")
        mask = np.logical_and.reduce(
            [manifest[c].is_valid().to_numpy(zero_copy_only=False) for c in self.columns]
        )
        return manifest.filter(pa.array(mask))

    def targets(self, rows: pa.Table) -> np.ndarray:
        return np.stack([rows[c].to_numpy(zero_copy_only=False) for c in self.columns], 1).astype(np.float32)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def soft_target_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """BCE against the softened sigmoids: one binary distribution per AU."""
        t = temperature
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t

    def decisions(self, prob: np.ndarray) -> np.ndarray:
        return prob >= 0.5  # each AU at 0.5: thresholds differ between the models compared

    def true_labels(self, targets: np.ndarray) -> np.ndarray:
        return targets.astype(bool)

    def thresholds(self, val_targets: np.ndarray, val_prob: Callable[[], np.ndarray]) -> np.ndarray:
        # chosen on validation data, never on the test fold
        return choose_thresholds(val_targets.astype(bool), val_prob(), prior=self.threshold_prior)

    def fold_rows(self, fold: FoldPredictions) -> list[Row]:
        return multilabel_fold_rows(fold)

    def pooled_rows(self, folds: Sequence[FoldPredictions]) -> list[Row]:
        return pooled_multilabel_rows(folds)

    def trivial_baseline(self, folds: Sequence[FoldPredictions]) -> float:
        return all_present_avg_f1(folds)

    def report_sections(
        self, doc: render.Doc, folds: Sequence[FoldPredictions], r: Rows, plots: render.Plots
    ) -> None:
        render.multilabel_sections(doc, folds, r, plots)


@dataclass(frozen=True)
class EmotionTask(Task):
    """The 7 FER-2013 emotions: one softmax over the classes, class-weighted cross-entropy
    (seed 004), judged by accuracy."""

    name: ClassVar[str] = "emotion"
    label_table: ClassVar[str] = "emotion_labels"
    source_column: ClassVar[str] = "emotion_source"
    labelstudio_control: ClassVar[str] = "emotion"
    headline: ClassVar[str] = "accuracy"
    headline_name: ClassVar[str] = "Accuracy"
    fold_metric: ClassVar[str] = "accuracy"
    min_outputs: ClassVar[int] = 2
    baseline_description: ClassVar[str] = "accuracy of the majority class"
    per_label_columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1"),
        ("support", "faces"),
    )
    published_baselines: ClassVar[tuple[render.Baseline, ...]] = (
        (
            "Seed-003 CNN (lowest class)",
            76.0,
            "FER-2013 test, per-class accuracy (not overall); disgust hardest",
        ),
        ("Seed-003 CNN (highest class)", 100.0, "FER-2013 test, per-class accuracy (not overall)"),
        ("DenseNet-121", 73.2, "FER-2013 test accuracy"),
        ("VGG", 73.3, "FER-2013 test accuracy"),
        ("ResMaskingNet", 74.1, "FER-2013 test accuracy"),
        ("7-model ensemble", 76.8, "FER-2013 test accuracy"),
    )

    @property
    def labels(self) -> list[str]:
        return list(EMOTIONS)

    def select_rows(self, manifest: pa.Table) -> pa.Table:
        return manifest.filter(manifest["emotion"].is_valid())

    def targets(self, rows: pa.Table) -> np.ndarray:
        index = {e: i for i, e in enumerate(EMOTIONS)}
        return np.array([index[e] for e in rows["emotion"].to_pylist()], dtype=np.int64)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=1)

    def soft_target_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """KL divergence of the softened softmaxes."""
        t = temperature
        kl = F.kl_div(
            F.log_softmax(student / t, 1),
            F.log_softmax(teacher / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        return kl * t * t

    def decisions(self, prob: np.ndarray) -> np.ndarray:
        return prob.argmax(1)

    def true_labels(self, targets: np.ndarray) -> np.ndarray:
        return targets

    def fold_rows(self, fold: FoldPredictions) -> list[Row]:
        return multiclass_fold_rows(fold)

    def trivial_baseline(self, folds: Sequence[FoldPredictions]) -> float:
        return majority_accuracy(folds)

    def report_sections(
        self, doc: render.Doc, folds: Sequence[FoldPredictions], r: Rows, plots: render.Plots
    ) -> None:
        render.multiclass_sections(doc, folds, r, plots)


TASKS: dict[str, Task] = {t.name: t for t in (AUTask(), EmotionTask())}


def get_task(task: str | Task) -> Task:
    """The task object of a name ("au", "emotion"); a Task is returned as it is.

    Raises:
        ConfigError: an unknown task name.
    """
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: expected one of {sorted(TASKS)}")
    return TASKS[task]
