"""What the production models think of a face, for the people who review it: every label's
probability and the model's call on it, as the FiftyOne patches and the Label Studio tasks show it.

    views = production_views(wh, crop_ids)            # cached predictions only
    views = production_views(wh, crop_ids, predict=True)  # run the models on faces not cached
    views["<crop_id>"]["au"].calls  # (LabelCall("AU1", 0.03, "absent", "inner brow raiser"), ...)

A call is the model's at the pseudo-labeler's thresholds (`pseudo_thresholds` of the model's
out-of-fold predictions, at the review queue's target precision, so "unsure" here is what the
queue's `between_thresholds` asks a curator about):
- an AU is `present` at or above its upper cut, `absent` at or below its lower cut, `unsure`
  between them, also where the model has no cut on a side (it cannot call that side at the
  target precision);
- an emotion: the most probable class is `present` at or above its cut, else `unsure`; the other
  classes are `absent`.

Probabilities come from the model's prediction cache (`labeling.curation.pseudo.face_predictions`:
every face the review queue or the pseudo-labeler ran), so reading views runs no model; with
`predict` the faces not cached are predicted (and cached).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeling.curation.settings import ReviewSettings
from warehouse import Warehouse
from warehouse.schemas import FACS_NAMES

if TYPE_CHECKING:
    from labeling.curation.pseudo import Cut

log = logging.getLogger(__name__)

State = Literal["present", "absent", "unsure"]
STATES: tuple[State, ...] = ("present", "absent", "unsure")


def label_name(label: str) -> str:
    """What a person calls the label: the FACS name of an AU ("AU4" -> "brow lowerer"), "" else."""
    if label.startswith("AU") and label[2:].isdigit():
        return FACS_NAMES.get(int(label[2:]), "")
    return ""


def named(label: str) -> str:
    """The label with its FACS name: "AU4 brow lowerer"; an emotion as it is."""
    name = label_name(label)
    return f"{label} {name}" if name else label


@dataclass(frozen=True)
class LabelCall:
    """One label of one face: the model's probability and its call at the pseudo-label cuts."""

    label: str  # "happy", "AU12"
    probability: float
    state: State

    @property
    def name(self) -> str:
        return label_name(self.label)


@dataclass(frozen=True)
class ModelView:
    """One model's view of one face, its labels in the model's order."""

    task: str
    model_id: str
    calls: tuple[LabelCall, ...]

    @property
    def multi_label(self) -> bool:
        """Each label called on its own (AUs), or one class of several (emotions)."""
        return CALL_RULES[self.task].multi_label

    @property
    def top(self) -> LabelCall:
        return max(self.calls, key=lambda c: c.probability)

    def with_state(self, state: State) -> list[LabelCall]:
        return [c for c in self.calls if c.state == state]

    def probabilities(self) -> dict[str, float]:
        return {c.label: c.probability for c in self.calls}


def au_states(prob: np.ndarray, labels: list[str], cuts: Mapping[str, Cut | None]) -> np.ndarray:
    """(faces, AUs) of STATES indices: present at or above the upper cut, absent at or below the
    lower, unsure otherwise (between the cuts, or on a side without one)."""
    state = np.full(prob.shape, STATES.index("unsure"), dtype=np.int8)
    for k, lab in enumerate(labels):
        c = cuts.get(lab)
        if c is None:
            continue
        if c.lower is not None:
            state[prob[:, k] <= c.lower, k] = STATES.index("absent")
        if c.upper is not None:
            state[prob[:, k] >= c.upper, k] = STATES.index("present")
    return state


def emotion_states(prob: np.ndarray, labels: list[str], cuts: Mapping[str, Cut | None]) -> np.ndarray:
    """(faces, classes) of STATES indices: the top class present at or above its cut, else
    unsure; every other class absent."""
    state = np.full(prob.shape, STATES.index("absent"), dtype=np.int8)
    rows = np.arange(len(prob))
    top = prob.argmax(1) if prob.size else np.zeros(0, int)
    upper = np.array([_upper(cuts.get(lab)) for lab in labels])
    sure = prob[rows, top] >= upper[top]
    state[rows, top] = np.where(sure, STATES.index("present"), STATES.index("unsure"))
    return state


@dataclass(frozen=True)
class CallRule:
    """How a task's model calls its labels: `states` gives (faces, labels) STATES indices."""

    states: Callable[[np.ndarray, list[str], Mapping[str, Cut | None]], np.ndarray]
    multi_label: bool  # each label on its own (AUs), or the one class of several (emotions)


# By task name: reading views must not import the task types (models.tasks loads torch).
CALL_RULES: dict[str, CallRule] = {
    "au": CallRule(au_states, multi_label=True),
    "emotion": CallRule(emotion_states, multi_label=False),
}


def _upper(cut: Cut | None) -> float:
    return np.inf if cut is None or cut.upper is None else cut.upper


@dataclass
class ProductionModel:
    """A task's production model: its id, cuts and cached predictions."""

    wh: Warehouse
    task: str
    model_id: str
    target_precision: float
    min_support: int

    # The model's run and the pseudo-labeler load torch: imported when a view is made, so that
    # reading the warehouse for FiftyOne costs no torch import when no model is in production.
    @cached_property
    def _folds(self) -> list:
        from models.pipeline import load_run

        return load_run(self.wh, self.model_id).folds

    @property
    def labels(self) -> list[str]:
        return list(self._folds[0].labels)

    @cached_property
    def cuts(self) -> dict[str, Cut | None]:
        from labeling.curation.pseudo import pseudo_thresholds

        return pseudo_thresholds(self._folds, self.target_precision, self.min_support)

    def cached(self, crop_ids: Iterable[str] | None) -> pa.Table | None:
        """The newest prediction cache of the model (crop_id, image_id, one column per label),
        only `crop_ids` when given; None when the model predicted nothing yet."""
        files = sorted(
            (self.wh.home / "predictions").glob(f"{self.model_id}-*.parquet"), key=lambda p: p.stat().st_mtime
        )
        if not files:
            return None
        table = pq.read_table(files[-1])
        if crop_ids is not None:
            table = table.filter(
                pc.is_in(table.column("crop_id"), pa.array(sorted(set(crop_ids)), pa.string()))
            )
        return table

    def predicted(self, crop_ids: Iterable[str], batch_size: int) -> pa.Table:
        """The model's probabilities of the stored crops `crop_ids` (cached ones read back, the
        others predicted and cached); unreadable crops are left out."""
        from labeling.curation.pseudo import face_predictions
        from models.predict import Predictor

        ids = sorted(set(crop_ids))
        faces = self.wh.sql(
            "SELECT crop_id, image_id, media_path, gray_media_path FROM crops "
            "WHERE list_contains($ids, crop_id) ORDER BY crop_id",
            {"ids": ids},
        )
        table, skipped = face_predictions(self.wh, Predictor.load(self.wh, self.model_id), faces, batch_size)
        if skipped:
            log.warning(
                "%s: %d crops could not be read (e.g. %s)", self.model_id, len(skipped), skipped[0][1]
            )
        return table

    def views(self, table: pa.Table) -> dict[str, ModelView]:
        labels = [lab for lab in self.labels if lab in table.column_names]
        if not table.num_rows or not labels:
            return {}
        prob = np.stack([table.column(lab).to_numpy(zero_copy_only=False) for lab in labels], 1).astype(float)
        states = CALL_RULES[self.task].states(prob, labels, self.cuts)
        out = {}
        for i, crop_id in enumerate(table.column("crop_id").to_pylist()):
            calls = tuple(
                LabelCall(lab, round(float(prob[i, k]), 4), STATES[states[i, k]])
                for k, lab in enumerate(labels)
            )
            out[crop_id] = ModelView(self.task, self.model_id, calls)
        return out


def production_models(wh: Warehouse, settings: ReviewSettings | None = None) -> dict[str, ProductionModel]:
    """The production model of each task that has one, with the review queue's cut settings."""
    from models.registry import production_model  # loads torch

    s = settings or ReviewSettings()
    out = {}
    for task in CALL_RULES:
        model_id = production_model(wh, task)
        if model_id:
            out[task] = ProductionModel(wh, task, model_id, s.target_precision, s.min_support)
    return out


def production_views(
    wh: Warehouse,
    crop_ids: Iterable[str] | None = None,
    predict: bool = False,
    batch_size: int = 64,
    settings: ReviewSettings | None = None,
) -> dict[str, dict[str, ModelView]]:
    """crop_id -> task -> the task's production model's view of the face (module docstring).
    Without `predict` only cached predictions are read (every face when `crop_ids` is None); a
    model whose files are gone gives no views (logged)."""
    ids = None if crop_ids is None else sorted(set(crop_ids))
    out: dict[str, dict[str, ModelView]] = {}
    for task, model in production_models(wh, settings).items():
        try:
            table = model.predicted(ids, batch_size) if predict and ids else model.cached(ids)
            views = model.views(table) if table is not None else {}
        except FileNotFoundError as exc:
            log.warning("no %s model view: %s", task, exc)
            continue
        for crop_id, view in views.items():
            out.setdefault(crop_id, {})[task] = view
    return out
