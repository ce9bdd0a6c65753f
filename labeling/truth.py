"""Ground-truth face boxes from a CSV file, to score a detector against (labeling.face_detector).

The file has one row per face: `path` (relative to the folder above the CSV's own folder),
`frame` (1-based for a video frame, empty for an image) and `x1, y1, x2, y2` in pixels; other
columns are ignored. The demo generator writes this format (ferlab.demodata, truth/faces.csv);
anyone with hand-boxed faces can write it too. The caller says which file to use: nothing here
knows where a generator puts it.
"""

from __future__ import annotations

import csv
from pathlib import Path

FaceBoxes = dict[tuple[str, int | None], list[tuple[float, float, float, float]]]


def read_face_boxes(path: str | Path) -> FaceBoxes:
    """The CSV at `path` as (path, frame or None) -> the true face boxes (x1, y1, x2, y2). An
    image with no key holds no face. OSError when the file cannot be read; KeyError or
    ValueError when a row lacks a column or holds a non-number."""
    boxes: FaceBoxes = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            key = (r["path"], int(r["frame"]) if r["frame"] else None)
            boxes.setdefault(key, []).append((float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"])))
    return boxes


def truth_root(path: str | Path) -> Path:
    """The folder the CSV's `path` column is relative to: the one above the CSV's folder."""
    return Path(path).resolve().parent.parent
