"""Evaluation metrics in numpy: per-label thresholds, multi-label P/R/F1, PR curves, average
precision, confusion matrix and single-label classification scores.

Conventions: a label is predicted positive when prob >= threshold; every ratio with a zero
denominator is 0 (zero division -> 0), never NaN, so means over labels and folds stay defined.
"""

from __future__ import annotations

import numpy as np


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_2d(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} differ")
    return y, p


def _ranked_counts(y_k: np.ndarray, p_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores sorted descending, cut only between distinct values: (cut scores, TP, FP) where TP[j],
    FP[j] count the samples with score >= cut[j]."""
    order = np.argsort(-p_k, kind="mergesort")
    ps = p_k[order]
    ys = y_k[order]
    tp = np.cumsum(ys, dtype=np.int64)
    fp = np.arange(1, ps.size + 1, dtype=np.int64) - tp
    # the last index of each run of equal scores: a threshold cannot split ties
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), ps.size - 1] if ps.size else np.zeros(0, dtype=np.int64)
    return ps[last], tp[last], fp[last]


def choose_thresholds(
    y_true: np.ndarray, prob: np.ndarray, grid: np.ndarray | None = None, prior: float = 0.0
) -> np.ndarray:
    """Per-label decision threshold maximising F1 on this (validation) data; (N,K) -> (K,).

    grid=None: every distinct score is a candidate (exact optimum); the chosen threshold is the
    midpoint between the chosen cut score and the next lower distinct score, which predicts the
    same on this data and leaves a margin for unseen data. With a grid, only its values are
    tried. Ties in F1 go to the higher threshold. A label with no positives gets a threshold just
    above its highest score (predict none: no false positives). Vectorised: one sort per label,
    cumulative counts, no loop over thresholds or samples.

    prior > 0 pulls each threshold toward 0.5 as if `prior` positives had voted for 0.5:
    t = (n_pos * t_best + prior * 0.5) / (n_pos + prior), so a label with few positives in the
    validation data (a few faces of one or two people) is not cut where they happen to sit; a
    label without positives then gets 0.5 instead of predicting none."""
    y, p = _check_2d(y_true, prob)
    n, k = y.shape
    out = np.full(k, 0.5, dtype=np.float64)
    if n == 0:
        return out
    g = None if grid is None else np.sort(np.asarray(grid, dtype=np.float64))[::-1]
    for j in range(k):  # K is small (labels); everything inside is vectorised over samples
        y_k, p_k = y[:, j], p[:, j]
        n_pos = int(y_k.sum())
        if n_pos == 0:
            out[j] = 0.5 if prior > 0 else max(0.5, float(np.nextafter(p_k.max(), np.inf)))
            continue
        cuts, tp, fp = _ranked_counts(y_k, p_k)
        if g is None:
            f1 = _div(2 * tp, 2 * tp + fp + (n_pos - tp))
            best = int(np.argmax(f1))  # cuts descend: first maximum = highest threshold
            lower = cuts[best + 1] if best + 1 < cuts.size else cuts[best]
            mid = 0.5 * (cuts[best] + lower)
            # adjacent floats: the midpoint may round onto the lower score, which would flip it
            out[j] = mid if mid > lower or best + 1 == cuts.size else cuts[best]
        else:
            # samples with score >= t: cuts descend, so count the cuts >= t and read the cumulative counts
            idx = np.searchsorted(-cuts, -g, side="right") - 1
            tp_g = np.where(idx >= 0, tp[np.maximum(idx, 0)], 0)
            fp_g = np.where(idx >= 0, fp[np.maximum(idx, 0)], 0)
            f1 = _div(2 * tp_g, 2 * tp_g + fp_g + (n_pos - tp_g))
            out[j] = g[int(np.argmax(f1))]
        if prior > 0:
            out[j] = (n_pos * out[j] + prior * 0.5) / (n_pos + prior)
    return out


def multilabel_scores(y_true: np.ndarray, prob: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label precision, recall, F1 (float, zero division -> 0) and support (int: positives),
    each (K,), predicting positive where prob >= thresholds."""
    y, p = _check_2d(y_true, prob)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (y.shape[1],))
    pred = p >= t[None, :]
    tp = (pred & y).sum(axis=0)
    fp = (pred & ~y).sum(axis=0)
    fn = (~pred & y).sum(axis=0)
    return {
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "support": (tp + fn).astype(np.int64),
    }


def pr_curve(y_true_k: np.ndarray, prob_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve of one label: (precision, recall), one point per distinct score from
    the highest threshold down, preceded by the (precision 1, recall 0) start point; recall thus
    rises. No positives: recall is 0 everywhere."""
    y = np.asarray(y_true_k).astype(bool).ravel()
    p = np.asarray(prob_k, dtype=np.float64).ravel()
    if y.size == 0:
        return np.ones(1), np.zeros(1)
    _, tp, fp = _ranked_counts(y, p)
    precision = np.r_[1.0, _div(tp, tp + fp)]
    recall = np.r_[0.0, _div(tp, np.full(tp.shape, y.sum()))]
    return precision, recall


def average_precision(y_true_k: np.ndarray, prob_k: np.ndarray) -> float:
    """Average precision of one label, sum_n (R_n - R_{n-1}) P_n over the PR-curve points (step
    rule, no interpolation: scikit-learn's definition). 0.0 when there are no positives."""
    precision, recall = pr_curve(y_true_k, prob_k)
    return float(np.sum(np.diff(recall) * precision[1:]))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    q = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != q.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {q.shape} differ")
    if t.size and (min(t.min(), q.min()) < 0 or max(t.max(), q.max()) >= n_classes):
        raise ValueError(f"class index outside 0..{n_classes - 1}")
    return np.bincount(t * n_classes + q, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_scores(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> dict[str, np.ndarray | float]:
    """Single-label scores: "accuracy" (float) and per-class "precision", "recall", "f1", "support"
    (each (C,); zero division -> 0)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    total = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": _div(tp, predicted),
        "recall": _div(tp, support),
        "f1": _div(2 * tp, predicted + support),
        "support": support.astype(np.int64),
    }
