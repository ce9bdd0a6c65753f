"""Ground-truth face boxes from a CSV file, to score a detector against (labeling.student.face_detector).

The file has one row per face: `path` (relative to the folder above the CSV's own folder),
`frame` (1-based for a video frame, empty for an image) and `x1, y1, x2, y2` in pixels; other
columns are ignored. The demo generator writes this format (ferlab.demodata, truth/faces.csv);
anyone with hand-boxed faces can write it too. The caller says which file to use: nothing here
knows where a generator puts it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from warehouse.errors import InputError

FaceBoxes = dict[tuple[str, int | None], list[tuple[float, float, float, float]]]


COLUMNS = ("path", "frame", "x1", "y1", "x2", "y2")


def read_face_boxes(path: str | Path) -> FaceBoxes:
    """The CSV at `path` as (path, frame or None) -> the true face boxes (x1, y1, x2, y2). An
    image with no key holds no face.

    Raises:
        OSError: the file cannot be read.
        InputError: a column is missing, or a row holds a non-number (the file and line named):
            a score against half a ground truth would mislead, so no row is skipped.
    """
    boxes: FaceBoxes = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (rows.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path}: no column {', '.join(missing)}; a face truth CSV has {', '.join(COLUMNS)}"
            )
        for r in rows:
            try:
                key = (r["path"], int(r["frame"]) if r["frame"] else None)
                box = (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{path}, line {rows.line_num}: {exc}; frame is an integer (empty for an image), "
                    "x1..y2 are pixel numbers"
                ) from None
            boxes.setdefault(key, []).append(box)
    return boxes


def truth_root(path: str | Path) -> Path:
    """The folder the CSV's `path` column is relative to: the one above the CSV's folder."""
    return Path(path).resolve().parent.parent
