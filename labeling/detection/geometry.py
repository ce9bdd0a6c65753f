"""Box geometry and detection scores, in one place: IoU, the square a face crop is cut from,
matching found boxes to true ones, and average precision from a precision-recall curve.

Boxes are (x1, y1, x2, y2) in pixels, x2 and y2 exclusive edges. The AU models' per-label
average precision from scores (scikit-learn's step rule) is a different measure and lives
with the model metrics (models.metrics.average_precision).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Box = tuple[str, float, float, float, float]  # label, x1, y1, x2, y2 (pixels)
Prediction = tuple[str, float, float, float, float, float]  # label, x1, y1, x2, y2, score


def iou(a: Sequence[float], b: np.ndarray) -> np.ndarray:
    """IoU of box `a` (x1, y1, x2, y2) with every row of `b` ((N, 4)); 0 where the union is empty."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 clipped to the image; NaN stays NaN (and is degenerate)."""
    limits = np.array([width, height, width, height], np.float64)
    return np.clip(boxes, 0.0, limits)


def crop_squares(boxes: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The squares face crops are cut from: for each (already clipped) box of (N, 4), its
    center (cx, cy) and side max(w, h) * (1 + 2 * margin). Vectorized over boxes."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    return cx, cy, side


def interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Detection AP from a precision-recall curve ranked by score: all-point interpolated
    (PASCAL VOC 2010+), the area under the precision envelope."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0 if len(precision) else 0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _as_prediction(d) -> Prediction:
    if hasattr(d, "score") and hasattr(d, "x1"):  # a labeling.detection.detectors.Detection
        return (d.label, d.x1, d.y1, d.x2, d.y2, d.score)
    label, x1, y1, x2, y2, score = d
    return (str(label), float(x1), float(y1), float(x2), float(y2), float(score))


def map50(
    predictions: Sequence[Iterable],
    truth: Sequence[Iterable[Box]],
    iou_threshold: float = 0.5,
) -> float:
    """Mean over the classes present in `truth` of their AP at IoU >= `iou_threshold`.

    Per image, predictions (Detection or (label, x1, y1, x2, y2, score)) and true boxes
    ((label, x1, y1, x2, y2)). A prediction, best score first, matches the unmatched true box
    of its class it overlaps most, if that IoU reaches the threshold; else it is a false
    positive (a second box on a matched face too). Classes with predictions but no true box
    are not counted. NaN when `truth` has no box at all. ValueError when the two lists differ
    in length."""
    if len(predictions) != len(truth):
        raise ValueError(f"{len(predictions)} predictions for {len(truth)} images")
    gt: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for i, boxes in enumerate(truth):
        per_class: dict[str, list] = defaultdict(list)
        for label, x1, y1, x2, y2 in boxes:
            per_class[str(label)].append((x1, y1, x2, y2))
        for label, rows in per_class.items():
            gt[label][i] = np.asarray(rows, np.float64)
    if not gt:
        return math.nan
    preds: dict[str, list[tuple[float, int, tuple]]] = defaultdict(list)
    for i, found in enumerate(predictions):
        for d in found:
            label, x1, y1, x2, y2, score = _as_prediction(d)
            preds[label].append((score, i, (x1, y1, x2, y2)))
    aps = []
    for label, by_image in gt.items():
        n_true = sum(len(b) for b in by_image.values())
        matched = {i: np.zeros(len(b), bool) for i, b in by_image.items()}
        ranked = sorted(preds.get(label, []), key=lambda p: -p[0])  # stable: ties keep input order
        tp = np.zeros(len(ranked))
        for k, (_, i, box) in enumerate(ranked):
            boxes = by_image.get(i)
            if boxes is None:
                continue
            ious = np.where(matched[i], -1.0, iou(box, boxes))
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold:
                matched[i][j] = True
                tp[k] = 1
        cum_tp = np.cumsum(tp)
        recall = cum_tp / n_true
        precision = cum_tp / np.arange(1, len(ranked) + 1)
        aps.append(interpolated_ap(recall, precision))
    return float(np.mean(aps))


def face_recall(
    found: Mapping[str, Sequence[Sequence[float]]],
    truth: Mapping[str, Sequence[Sequence[float]]],
    iou_threshold: float = 0.5,
) -> tuple[float, int]:
    """Share of the true faces (image id -> boxes, the last four values x1, y1, x2, y2) that a
    found box of the same image overlaps at IoU >= `iou_threshold`, each found box matching
    one face at most; and the number of true faces. NaN when there is none."""
    hits = total = 0
    for image_id, true_boxes in truth.items():
        boxes = np.asarray([b[-4:] for b in found.get(image_id, [])], np.float64).reshape(-1, 4)
        used = np.zeros(len(boxes), bool)
        for box in true_boxes:
            total += 1
            if not len(boxes):
                continue
            ious = np.where(used, -1.0, iou(box[-4:], boxes))
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold:
                used[j] = True
                hits += 1
    return (hits / total if total else float("nan")), total
