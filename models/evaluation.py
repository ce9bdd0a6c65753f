"""Metric rows from held-out predictions: the flat {"fold", "metric", "label", "value"} rows of
the `eval_metrics` table, for a multi-label model (per-label thresholds) or a multi-class one
(argmax), their mean ± std over folds, and the trivial baselines. Reports are rendered from
these rows only, so every figure in a report is one the table holds too."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.metrics import average_precision, classification_scores, confusion_matrix, multilabel_scores
from models.predictions import FoldPredictions

Row = dict


def row(fold: int | None, metric: str, label: str, value: float) -> Row:
    """One eval_metrics row (fold None: over all folds; label "": over all labels)."""
    return {"fold": fold, "metric": metric, "label": label, "value": float(value)}


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation over folds (ddof=1); 0 for a single fold."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def multilabel_fold_rows(f: FoldPredictions) -> list[Row]:
    """Per label f1 / precision / recall / support at the fold's thresholds (0.5 where it has
    none), the threshold, ap; then avg_f1 (the seeds' Avg.F1) and n_samples.

    Raises:
        ValueError: y_true, prob and labels disagree in shape.
    """
    y = np.asarray(f.y_true).astype(bool)
    p = np.asarray(f.prob, dtype=np.float64)
    k = len(f.labels)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != k:
        raise ValueError(f"fold {f.fold}: y_true {y.shape}, prob {p.shape}, {k} labels")
    # No validation thresholds: the plain 0.5 cut (the report says which was used).
    t = np.full(k, 0.5) if f.thresholds is None else np.asarray(f.thresholds, dtype=np.float64)
    s = multilabel_scores(y, p, t)
    rows = []
    for j, label in enumerate(f.labels):
        for metric in ("f1", "precision", "recall", "support"):
            rows.append(row(f.fold, metric, label, s[metric][j]))
        rows.append(row(f.fold, "threshold", label, t[j]))
        rows.append(row(f.fold, "ap", label, average_precision(y[:, j], p[:, j])))
    rows.append(row(f.fold, "avg_f1", "", float(np.mean(s["f1"])) if k else 0.0))
    rows.append(row(f.fold, "n_samples", "", y.shape[0]))
    return rows


def multiclass_fold_rows(f: FoldPredictions) -> list[Row]:
    """accuracy, mean_precision, macro_f1, n_samples; per class precision / recall / f1 /
    support; confusion counts labelled "true->pred" (prediction = argmax).

    Raises:
        ValueError: y_true, prob and labels disagree in shape.
    """
    y = np.asarray(f.y_true, dtype=np.int64).ravel()
    p = np.asarray(f.prob, dtype=np.float64)
    c = len(f.labels)
    if p.ndim != 2 or p.shape != (y.size, c):
        raise ValueError(f"fold {f.fold}: y_true {y.shape}, prob {p.shape}, {c} labels")
    pred = p.argmax(axis=1)
    s = classification_scores(y, pred, c)
    cm = confusion_matrix(y, pred, c)
    rows = [
        row(f.fold, "accuracy", "", s["accuracy"]),
        # seed 004's Table 1 "Average" column: the unweighted mean of per-class precision
        row(f.fold, "mean_precision", "", float(np.mean(s["precision"]))),
        row(f.fold, "macro_f1", "", float(np.mean(s["f1"]))),
        row(f.fold, "n_samples", "", y.size),
    ]
    for j, label in enumerate(f.labels):
        for metric in ("precision", "recall", "f1", "support"):
            rows.append(row(f.fold, metric, label, s[metric][j]))
    for a, la in enumerate(f.labels):
        for b, lb in enumerate(f.labels):
            rows.append(row(f.fold, "confusion", f"{la}->{lb}", cm[a, b]))
    return rows


def summary_rows(per_fold: list[Row], n_folds: int) -> list[Row]:
    """fold=None rows from per-fold rows: X = mean and X_std = sample std over folds of every
    score; counts summed as *_total (support_total, n_samples_total, confusion_total); n_folds."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for r in per_fold:
        by_key.setdefault((r["metric"], r["label"]), []).append(r["value"])
    summed = {"support", "n_samples", "confusion"}
    rows = []
    for (metric, label), values in by_key.items():
        if metric in summed:
            rows.append(row(None, f"{metric}_total", label, float(np.sum(values))))
        elif metric != "threshold":  # thresholds are per-fold settings, not scores
            rows.append(row(None, metric, label, float(np.mean(values))))
            rows.append(row(None, f"{metric}_std", label, _std(values)))
    rows.append(row(None, "n_folds", "", n_folds))
    return rows


def pooled_multilabel_rows(folds: Sequence[FoldPredictions]) -> list[Row]:
    """What a fold without positives of a label cannot say, from all folds' held-out predictions
    together (each thresholded by its own fold):

    - per label: ap_pooled, f1_pooled, precision_pooled, recall_pooled; folds_without_positives
      (folds where F1 is undefined: the seeds' per-fold protocol counts them as 0); f1_defined
      (mean F1 over the folds that have positives; NaN when none has); f1_all_present (the F1 of
      calling the label present on every face: its own trivial baseline);
    - overall: avg_f1_pooled (mean of f1_pooled over labels) and avg_f1_defined.
    """
    y_all = np.concatenate([np.asarray(f.y_true).astype(bool) for f in folds])
    p_all = np.concatenate([np.asarray(f.prob, dtype=np.float64) for f in folds])
    k = len(folds[0].labels)
    cut = [np.full(k, 0.5) if f.thresholds is None else np.asarray(f.thresholds, np.float64) for f in folds]
    predicted = np.concatenate([np.asarray(f.prob, np.float64) >= t for f, t in zip(folds, cut)])
    pooled = multilabel_scores(y_all, predicted.astype(np.float64), np.full(k, 0.5))
    per_fold = [
        multilabel_scores(np.asarray(f.y_true).astype(bool), np.asarray(f.prob, np.float64), t)
        for f, t in zip(folds, cut)
    ]
    rows, defined_means = [], []
    for j, label in enumerate(folds[0].labels):
        defined = [s["f1"][j] for s in per_fold if s["support"][j] > 0]
        defined_mean = float(np.mean(defined)) if defined else float("nan")
        defined_means.append(defined_mean)
        rows += [
            row(None, "ap_pooled", label, average_precision(y_all[:, j], p_all[:, j])),
            row(None, "f1_pooled", label, pooled["f1"][j]),
            row(None, "precision_pooled", label, pooled["precision"][j]),
            row(None, "recall_pooled", label, pooled["recall"][j]),
            row(None, "folds_without_positives", label, len(folds) - len(defined)),
            row(None, "f1_defined", label, defined_mean),
            # the label's own trivial baseline: calling it present on every face
            row(None, "f1_all_present", label, 2 * y_all[:, j].sum() / (y_all[:, j].sum() + len(y_all))),
        ]
    rows.append(row(None, "avg_f1_pooled", "", float(np.mean(pooled["f1"])) if k else 0.0))
    rows.append(row(None, "avg_f1_defined", "", float(np.nanmean(defined_means)) if k else 0.0))
    return rows


def check_folds(folds: Sequence[FoldPredictions]) -> list[str]:
    """The folds' common labels.

    Raises:
        ValueError: no folds, or folds with different labels.
    """
    if not folds:
        raise ValueError("no folds")
    labels = list(folds[0].labels)
    if any(list(f.labels) != labels for f in folds):
        raise ValueError("all folds must have the same labels in the same order")
    return labels


PER_AU_FIGURES = ("f1_pooled", "f1", "f1_all_present", "folds_without_positives")


def per_label(rows: Sequence[Row], metrics: Sequence[str] = PER_AU_FIGURES) -> dict[str, dict[str, float]]:
    """{label: {metric: value}} of the over-all-folds (fold=None) rows of `metrics`, labels in
    the rows' order."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["fold"] is None and r["label"] and r["metric"] in metrics:
            out.setdefault(r["label"], {})[r["metric"]] = float(r["value"])
    return out


def per_au_lines(rows: Sequence[Row]) -> list[str]:
    """A table of an AU model's figures per AU against calling the AU present on every face."""
    lines = ["AU       F1 pooled   F1 mean over folds   always present   folds without positives"]
    for label, v in per_label(rows).items():
        lines.append(
            f"{label:8} {v.get('f1_pooled', float('nan')):9.3f}   {v.get('f1', float('nan')):18.3f}   "
            f"{v.get('f1_all_present', float('nan')):14.3f}   {int(v.get('folds_without_positives', 0))}"
        )
    return lines


def overall(rows: Sequence[Row], metric: str) -> float:
    """The fold=None, label="" value of `metric`.

    Raises:
        KeyError: the rows have no such value.
    """
    for r in rows:
        if r["metric"] == metric and r["fold"] is None and r["label"] == "":
            return float(r["value"])
    raise KeyError(f"evaluation has no overall {metric!r}")


def all_present_avg_f1(folds: Sequence[FoldPredictions]) -> float:
    """Avg.F1 of predicting every label present in every sample (a multi-label model that
    learned nothing), over all folds' held-out samples."""
    y = np.concatenate([p.y_true for p in folds]).astype(bool)
    prevalence = y.mean(0)
    return float(np.mean(2 * prevalence / (1 + prevalence)))


def majority_accuracy(folds: Sequence[FoldPredictions]) -> float:
    """Accuracy of always answering the most frequent held-out class."""
    y = np.concatenate([p.y_true for p in folds])
    return float(np.bincount(y).max() / len(y))


class Rows:
    """Lookup over evaluation rows: the only source of numbers for a report."""

    def __init__(self, rows: list[Row]) -> None:
        self._v = {(r["fold"], r["metric"], r["label"]): r["value"] for r in rows}
        self.folds = sorted({r["fold"] for r in rows if r["fold"] is not None})

    def __call__(self, metric: str, label: str = "", fold: int | None = None) -> float:
        return self._v[(fold, metric, label)]

    def pm(self, metric: str, label: str = "") -> str:
        """ "mean ± std" over folds, three decimals."""
        return f"{self(metric, label):.3f} ± {self(metric + '_std', label):.3f}"
