"""dlib 68-point landmarks: detection, the face frame, mirror order and the control points
(landmarks + virtual points on forehead/cheeks/chin + pinned image border) the warps use."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ferlab.synth.warp import border_points

# index -> index of the same feature on the other side of the face, for horizontal mirroring
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nose bottom
    + [45, 44, 43, 42, 47, 46]  # image-left eye -> image-right eye
    + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)

# virtual control points, after the 68 landmarks (see `virtual_points`)
VIRTUAL = (
    "forehead_out_l",
    "forehead_out_r",
    "forehead_in_l",
    "forehead_in_r",
    "forehead_mid",
    "cheek_l",
    "cheek_r",
    "mouthside_l",
    "mouthside_r",
    "chin",
    "temple_l",
    "temple_r",
    "glabella",
)
V = {name: 68 + i for i, name in enumerate(VIRTUAL)}
N_FACE_POINTS = 68 + len(VIRTUAL)
_VIRTUAL_MIRROR = [1, 0, 3, 2, 4, 6, 5, 8, 7, 9, 11, 10, 12]
MIRROR = np.concatenate([MIRROR_68, 68 + np.array(_VIRTUAL_MIRROR)])

# points on the image-left half of the face (their mirror partner is on the right half)
_LEFT = (
    list(range(0, 8))
    + list(range(17, 22))
    + [31, 32]
    + list(range(36, 42))
    + [48, 49, 50, 58, 59, 60, 61, 67]
    + [V["forehead_out_l"], V["forehead_in_l"], V["cheek_l"], V["mouthside_l"], V["temple_l"]]
)
SIDE = np.zeros(N_FACE_POINTS)  # -1 image-left, +1 image-right, 0 on the midline
SIDE[_LEFT] = -1.0
SIDE[MIRROR[_LEFT]] = 1.0


def face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(ex, ey, unit): unit vector along the eyes (image-left -> right), the face's 'down'
    vector, and the inter-ocular distance (eye centres) in pixels."""
    le = lm[36:42].mean(0)
    re = lm[42:48].mean(0)
    d = re - le
    unit = float(np.hypot(*d))
    ex = d / max(unit, 1e-6)
    ey = np.array([-ex[1], ex[0]])
    return ex, ey, unit


def virtual_points(lm: np.ndarray) -> np.ndarray:
    ex, ey, u = face_frame(lm)
    up = -ey * u
    brow_mid = 0.5 * (lm[21] + lm[22])
    pts = [
        lm[18] + 0.55 * up,
        lm[25] + 0.55 * up,
        lm[20] + 0.6 * up,
        lm[23] + 0.6 * up,
        brow_mid + 0.6 * up,
        0.45 * lm[1] + 0.35 * lm[31] + 0.2 * lm[40],
        0.45 * lm[15] + 0.35 * lm[35] + 0.2 * lm[47],
        0.5 * (lm[48] + lm[4]),
        0.5 * (lm[54] + lm[12]),
        0.5 * (lm[57] + lm[8]),
        lm[0] + 0.55 * up - 0.05 * u * ex,
        lm[16] + 0.55 * up + 0.05 * u * ex,
        0.5 * (0.5 * (lm[21] + lm[22]) + lm[27]),
    ]
    return np.asarray(pts, np.float64)


def control_points(lm: np.ndarray, width: int, height: int) -> np.ndarray:
    """(68 + virtual + border, 2): everything the warps pin or move."""
    lm = np.asarray(lm, np.float64)
    return np.concatenate([lm, virtual_points(lm), border_points(width, height)])


@lru_cache(maxsize=1)
def dlib_models() -> tuple[Any, Any]:
    import dlib

    from labeling.detection.landmarks import dlib_shape_predictor

    return dlib.get_frontal_face_detector(), dlib_shape_predictor()


def predict_landmarks(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 points (float32) inside box (x0, y0, x1, y1) of an RGB uint8 image."""
    import dlib

    _, predictor = dlib_models()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(np.ascontiguousarray(image), rect)
    return np.array([[p.x, p.y] for p in shape.parts()], np.float32)


def detect_faces(
    image: np.ndarray, upsample: int = 1
) -> list[tuple[tuple[float, float, float, float], float]]:
    """dlib frontal detections: [(box, score)], best first."""
    detector, _ = dlib_models()
    rects, scores, _ = detector.run(np.ascontiguousarray(image), upsample, 0.0)
    out = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
    return sorted(out, key=lambda t: -t[1])


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """Landmarks of the detection nearest the image centre (None when dlib finds no face)."""
    faces = detect_faces(image)
    if not faces:
        return None
    h, w = image.shape[:2]

    def dist(box: tuple[float, float, float, float]) -> float:
        return float(np.hypot((box[0] + box[2]) / 2 - w / 2, (box[1] + box[3]) / 2 - h / 2))

    box = min((b for b, _ in faces), key=dist)
    return predict_landmarks(image, box)
