"""Eye centers for aligning crops more exactly than a detector's own landmarks.

YuNet's five points barely follow head roll: on a face turned 20 degrees in the image plane
its eye line reads about 2 degrees (tests/test_detect.py shows it), so a crop leveled by them
stays tilted. dlib's 68-point model (packaged, CC0) reads the roll to within a degree, for
about 1 ms a face. Pass `DlibEyes()` to `crop_faces(eyes=...)` to use it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"


class EyeLocator(Protocol):
    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """BGR image and (N, 4) face boxes -> (N, 2, 2) eye centers (subject's right eye, then
        left eye: the image-left one first for a frontal face); NaN where unknown."""
        ...


@lru_cache(maxsize=4)
def dlib_shape_predictor(weights: str | Path | None = None):
    """dlib's 68-point shape predictor from `weights`, default the packaged file; loaded once
    per file (DlibEyes, the demo generator). FileNotFoundError when set-up has not fetched the
    packaged file; RuntimeError (dlib's) for a file it cannot read."""
    import dlib

    if weights is None:
        from warehouse.packaged_weights import weight_path

        weights = weight_path(LANDMARKS_FILE)
    return dlib.shape_predictor(str(weights))


class DlibEyes:
    """Eye centers as the mean of dlib's six points around each eye."""

    def __init__(self, weights: str | Path | None = None):
        import dlib

        self._dlib = dlib
        self._predictor = dlib_shape_predictor(weights)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        eyes = np.full((len(boxes), 2, 2), np.nan)
        if not len(boxes):
            return eyes
        # dlib reads intensity only: one gray conversion per image serves every face
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
            if not np.isfinite([x1, y1, x2, y2]).all() or x2 - x1 < 2 or y2 - y1 < 2:
                continue
            rect = self._dlib.rectangle(int(x1), int(y1), int(round(x2)), int(round(y2)))
            shape = self._predictor(gray, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()[36:48]], np.float64)
            eyes[i] = points[:6].mean(axis=0), points[6:].mean(axis=0)
        return eyes
