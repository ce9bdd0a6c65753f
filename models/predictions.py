"""Held-out predictions of a trained model, one `FoldPredictions` per fold, and their file
(`predictions.npz` beside the model): what evaluation and the reports are computed from."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warehouse.atomic import atomic_write_bytes


@dataclass
class FoldPredictions:
    """What training hands to evaluation, one per fold (held-out identities)."""

    fold: int  # 0..k-1 (or 0 for a single train/test split)
    labels: list[str]  # e.g. ["AU1", "AU2", ...] or the emotion names
    y_true: np.ndarray  # multi-label: (N, K) bool ; multi-class: (N,) int class index
    prob: np.ndarray  # multi-label: (N, K) sigmoid probs ; multi-class: (N, C) softmax probs
    thresholds: np.ndarray | None  # multi-label: (K,) chosen on validation data ; multi-class: None
    groups: list[str]  # held-out subjects / identities of this fold
    crop_ids: list[str] = field(default_factory=list)  # the faces of the rows (empty in older files)


def save_predictions(path: Path, folds: Sequence[FoldPredictions]) -> None:
    """Write every fold's predictions to one compressed .npz at `path`, atomically.

    Raises:
        IndexError: `folds` is empty.
    """
    arrays: dict[str, np.ndarray] = {"labels": np.array(folds[0].labels)}
    for p in folds:
        arrays[f"y_true_{p.fold}"] = p.y_true
        arrays[f"prob_{p.fold}"] = p.prob
        arrays[f"groups_{p.fold}"] = np.array(p.groups)
        if p.crop_ids:
            arrays[f"crop_ids_{p.fold}"] = np.array(p.crop_ids)
        if p.thresholds is not None:
            arrays[f"thresholds_{p.fold}"] = p.thresholds
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_predictions(path: Path) -> list[FoldPredictions]:
    """The folds `save_predictions` wrote to `path`, in fold order.

    Raises:
        FileNotFoundError: no file at `path`.
    """
    with np.load(path, allow_pickle=False) as z:
        labels = [str(s) for s in z["labels"]]
        folds = sorted(int(k.rsplit("_", 1)[1]) for k in z.files if k.startswith("prob_"))
        return [
            FoldPredictions(
                fold=f,
                labels=labels,
                y_true=z[f"y_true_{f}"],
                prob=z[f"prob_{f}"],
                thresholds=z[f"thresholds_{f}"] if f"thresholds_{f}" in z.files else None,
                groups=[str(g) for g in z[f"groups_{f}"]],
                crop_ids=[str(c) for c in z[f"crop_ids_{f}"]] if f"crop_ids_{f}" in z.files else [],
            )
            for f in folds
        ]
