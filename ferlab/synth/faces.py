"""Expression synthesizer: real faces with Action Units rendered at known intensities (0..5).

Pipeline per source photo (`load_source_faces`):
  1. dlib frontal detector -> 68 landmarks; the face is rotated upright (eye line horizontal),
     cropped square with 2.2x the face box of margin and resized to 256 px; landmarks are
     re-fitted on the crop. Each crop is confirmed by YuNet (drops dlib false positives).
  2. The mouth with the largest inner-lip opening (over all faces loaded) gives the real
     mouth-interior patch (teeth, tongue, cavity) used for every open mouth.
  3. Neutralization: the face's own smile (lip corners above the lip line, mouth wider than
     the neutral template) and mouth opening are measured from landmarks and warped back (corners
     down/in, lips closed); a remaining sliver of teeth is inpainted and a lip line drawn. What a
     geometric warp cannot undo stays in `base_aus`: residual AU12/AU25 are re-measured with dlib
     on the neutralized crop, and a Duchenne smile's cheek bunching/crow's feet (skin texture)
     is booked as AU6 <= 1.5, in proportion to the original smile. Labels must add `base_aus`.
     No default face is skipped: the widest laugh (t1_3) neutralizes to closed lips with residual
     cheek raise, which `base_aus` reports.

`render` moves control points (landmarks + virtual forehead/cheek/chin points, jaw and image
border pinned unless an AU moves them) with a thin-plate spline (warp.py), shades furrows,
wrinkles and highlights multiplicatively (shading.py), and fills open mouths from the real patch
placed between the warped inner-lip landmarks (mouth.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from ferlab.synth import mouth
from ferlab.synth.landmarks import (
    MIRROR,
    MIRROR_68,
    N_FACE_POINTS,
    SIDE,
    V,
    control_points,
    detect_faces,
    detect_landmarks,
    face_frame,
    predict_landmarks,
)
from ferlab.synth.shading import Shader
from ferlab.synth.warp import warp_image

SIZE = 256
MARGIN = 2.2

RENDERABLE_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 20, 23, 25, 26)

# Ekman & Friesen (SEEDS.md A): relative weights of the AUs we render. AU26 opens the lips, so
# emotions with a jaw drop also carry AU25 (lips part), as DISFA labels them.
EMOTION_AUS: dict[str, dict[int, float]] = {
    "neutral": {},
    "happy": {6: 0.85, 12: 1.0},
    "sad": {1: 1.0, 4: 0.7, 15: 0.9},
    "surprise": {1: 1.0, 2: 1.0, 5: 0.8, 25: 0.8, 26: 0.9},
    "disgust": {9: 1.0, 15: 0.7},  # 9+15+16: AU16 is not rendered
    "angry": {4: 1.0, 5: 0.7, 23: 0.9},  # 4+5+7+23: AU7 is not rendered
    "fear": {1: 0.9, 2: 0.7, 4: 0.6, 5: 1.0, 20: 0.9, 25: 0.7, 26: 0.5},
}

# Control-point moves at intensity 5, for image-left/midline points (mirrored to the right):
# (outward, upward) in units of the inter-ocular distance.
_MOVES_LEFT: dict[int, dict[int, tuple[float, float]]] = {
    1: {
        21: (-0.03, 0.22),
        20: (-0.01, 0.17),
        19: (0.0, 0.09),
        18: (0.0, 0.03),
        V["forehead_mid"]: (0.0, 0.08),
        V["forehead_in_l"]: (0.0, 0.06),
        V["glabella"]: (0.0, 0.07),
    },
    2: {
        17: (0.03, 0.2),
        18: (0.02, 0.22),
        19: (0.0, 0.15),
        20: (0.0, 0.06),
        V["forehead_out_l"]: (0.0, 0.07),
        V["temple_l"]: (0.0, 0.03),
    },
    4: {
        17: (-0.02, -0.07),
        18: (-0.04, -0.11),
        19: (-0.06, -0.14),
        20: (-0.08, -0.16),
        21: (-0.11, -0.17),
        37: (0.0, -0.03),
        38: (0.0, -0.035),
        V["glabella"]: (0.0, -0.06),
        V["forehead_in_l"]: (-0.03, -0.03),
        V["forehead_mid"]: (0.0, -0.02),
    },
    5: {
        37: (0.0, 0.12),
        38: (0.0, 0.12),
        18: (0.0, 0.02),
        19: (0.0, 0.03),
        20: (0.0, 0.03),
    },
    6: {
        40: (0.0, 0.07),
        41: (0.0, 0.07),
        36: (0.01, 0.03),
        39: (0.0, 0.01),
        V["cheek_l"]: (0.02, 0.13),
        V["mouthside_l"]: (0.01, 0.04),
    },
    9: {
        31: (0.0, 0.07),
        32: (0.0, 0.06),
        33: (0.0, 0.05),
        30: (0.0, 0.03),
        29: (0.0, 0.015),
        49: (0.0, 0.07),
        50: (0.0, 0.09),
        51: (0.0, 0.1),
        48: (0.0, 0.03),
        60: (0.0, 0.04),
        61: (0.0, 0.08),
        62: (0.0, 0.085),
        59: (0.0, 0.02),
        21: (-0.04, -0.07),
        20: (-0.02, -0.05),
        19: (0.0, -0.03),
        40: (0.0, 0.03),
        41: (0.0, 0.03),
        V["glabella"]: (0.0, -0.05),
        V["cheek_l"]: (0.0, 0.05),
    },
    12: {
        48: (0.1, 0.16),
        60: (0.09, 0.15),
        49: (0.04, 0.07),
        59: (0.04, 0.09),
        61: (0.02, 0.04),
        67: (0.02, 0.05),
        50: (0.01, 0.02),
        58: (0.01, 0.03),
        V["mouthside_l"]: (0.08, 0.1),
        V["cheek_l"]: (0.02, 0.05),
    },
    15: {
        48: (0.02, -0.14),
        60: (0.02, -0.12),
        49: (0.0, -0.05),
        59: (0.0, -0.07),
        61: (0.0, -0.02),
        67: (0.0, -0.03),
        58: (0.0, -0.02),
        V["mouthside_l"]: (0.01, -0.07),
    },
    20: {
        48: (0.15, -0.03),
        60: (0.13, -0.02),
        49: (0.07, -0.01),
        59: (0.07, -0.02),
        61: (0.03, 0.0),
        67: (0.03, 0.0),
        50: (0.02, -0.02),
        58: (0.02, 0.02),
        51: (0.0, -0.02),
        57: (0.0, 0.02),
        V["mouthside_l"]: (0.09, -0.02),
    },
    23: {
        49: (-0.01, -0.08),
        50: (0.0, -0.09),
        51: (0.0, -0.09),
        59: (-0.01, 0.085),
        58: (0.0, 0.1),
        57: (0.0, 0.1),
        48: (-0.05, 0.0),
        60: (-0.04, 0.0),
        61: (-0.02, 0.0),
        67: (-0.02, 0.0),
    },
    25: {
        61: (0.0, 0.04),
        62: (0.0, 0.045),
        67: (0.0, -0.08),
        66: (0.0, -0.09),
        49: (0.0, 0.02),
        50: (0.0, 0.025),
        51: (0.0, 0.025),
        59: (0.0, -0.06),
        58: (0.0, -0.07),
        57: (0.0, -0.07),
        V["chin"]: (0.0, -0.02),
    },
    26: {
        66: (0.0, -0.32),
        67: (0.0, -0.29),
        57: (0.0, -0.33),
        58: (0.0, -0.31),
        59: (0.0, -0.24),
        48: (-0.02, -0.09),
        60: (-0.02, -0.08),
        61: (0.0, 0.02),
        62: (0.0, 0.02),
        V["chin"]: (0.0, -0.33),
        8: (0.0, -0.3),
        7: (0.0, -0.28),
        6: (0.0, -0.22),
        5: (0.0, -0.14),
        4: (0.0, -0.07),
        3: (0.0, -0.02),
        V["mouthside_l"]: (-0.01, -0.12),
    },
}


def _expand_moves(left: dict[int, tuple[float, float]]) -> np.ndarray:
    """(N_FACE_POINTS, 2) local (outward, upward) moves, mirrored onto the right half."""
    out = np.zeros((N_FACE_POINTS, 2))
    for i, (dx, dy) in left.items():
        out[i] = (dx, dy)
        out[MIRROR[i]] = (dx, dy)
    return out


MOVES: dict[int, np.ndarray] = {au: _expand_moves(m) for au, m in _MOVES_LEFT.items()}


@dataclass
class SourceFace:
    identity: str
    image: np.ndarray  # RGB uint8, square, SIZE px, the NEUTRALIZED face with margin
    landmarks: np.ndarray  # (68, 2) float32, dlib order, of the neutralized face in `image`
    base_aus: dict[int, float]  # AUs the neutralized source still shows; labels add these
    mouth_patch: np.ndarray | None  # rectified RGB mouth interior from a real open mouth


# --------------------------------------------------------------------------- rendering


def _level(intensity: float) -> float:
    """Intensity 0..5 -> 0..1 move scale; slightly concave so intensity 2 is already clear."""
    x = float(np.clip(intensity, 0.0, 5.0)) / 5.0
    return x**0.85


def _moved_points(
    lm: np.ndarray, local: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) control points for local (outward, upward) moves (N_FACE_POINTS, 2) in face units."""
    src = control_points(lm, width, height)
    ex, ey, u = face_frame(np.asarray(lm, np.float64))
    n = N_FACE_POINTS
    disp = (local[:, 0] * SIDE)[:, None] * ex[None, :] * u - local[:, 1][:, None] * ey[None, :] * u
    dst = src.copy()
    dst[:n] += disp
    return src, dst


def _shade(sh: Shader, lm: np.ndarray, levels: Mapping[int, float]) -> None:
    """Furrows, wrinkles, highlights per AU, drawn from the warped landmarks."""
    ex, ey, u = face_frame(lm)
    up = -ey

    def p(base: np.ndarray, out: float, upw: float, side: float) -> np.ndarray:
        return base + side * out * u * ex + upw * u * up

    def arc(a: np.ndarray, b: np.ndarray, bulge: float, n: int = 7) -> np.ndarray:
        t = np.linspace(0, 1, n)[:, None]
        mid = 0.5 * (a + b) + bulge * u * up
        return (1 - t) ** 2 * a + 2 * (1 - t) * t * mid + t**2 * b

    brow_mid = 0.5 * (lm[21] + lm[22])
    k = levels.get(1, 0.0)
    if k > 0:  # central forehead wrinkles, curved up in the middle
        for i, h in enumerate((0.3, 0.45, 0.6)):
            a = p(lm[20], 0.0, h, -1)
            b = p(lm[23], 0.0, h, 1)
            sh.stroke(arc(a, b, 0.06), 0.26 * k * (1 - 0.15 * i), 0.03)
            sh.stroke(arc(a, b, 0.06) + 0.035 * u * up, 0.1 * k, 0.03, dark=False)
    k = levels.get(2, 0.0)
    if k > 0:  # lateral forehead wrinkles above each outer brow
        for side, (o, i_) in ((-1, (17, 20)), (1, (26, 23))):
            for j, h in enumerate((0.28, 0.42)):
                a = p(lm[o], 0.02, h - 0.05, side)
                b = p(lm[i_], 0.0, h + 0.02, side)
                sh.stroke(arc(a, b, 0.05), 0.25 * k * (1 - 0.2 * j), 0.03)
                sh.stroke(arc(a, b, 0.05) + 0.035 * u * up, 0.09 * k, 0.03, dark=False)
    k = levels.get(4, 0.0)
    if k > 0:  # glabella: short vertical furrows with ridges, bunched brows, shadow under them
        for side in (-1, 1):
            top = p(brow_mid, 0.075, 0.1, side)
            bot = p(brow_mid, 0.045, -0.14, side)
            line = np.array([top, 0.5 * (top + bot) + side * 0.012 * u * ex, bot])
            sh.stroke(line, 0.42 * k, 0.022)
            sh.stroke(line, 0.12 * k, 0.07, fine=False)
            sh.stroke(line + side * 0.04 * u * ex, 0.1 * k, 0.025, dark=False)
        sh.stroke(
            np.array([p(lm[27], 0.07, 0.03, -1), lm[27] + 0.05 * u * up, p(lm[27], 0.07, 0.03, 1)]),
            0.18 * k,
            0.025,
        )
        for brow, eye in ((slice(17, 22), slice(36, 42)), (slice(22, 27), slice(42, 48))):
            c = 0.5 * (lm[brow].mean(0) + lm[eye].mean(0))
            sh.blob(c, (0.28, 0.09), np.degrees(np.arctan2(ex[1], ex[0])), 0.2 * k, dark=True)
    k = levels.get(5, 0.0)
    if k > 0:  # more sclera: a slight brightening of the widened eyes
        for eye in (slice(36, 42), slice(42, 48)):
            sh.blob(lm[eye].mean(0), (0.16, 0.07), np.degrees(np.arctan2(ex[1], ex[0])), 0.06 * k, dark=False)
    k6 = levels.get(6, 0.0)
    k12 = levels.get(12, 0.0)
    if k6 > 0:  # crow's feet, lower-lid furrow, raised cheek highlight
        for side, corner, low in ((-1, 36, (41, 40)), (1, 45, (46, 47))):
            start = p(lm[corner], 0.07, 0.0, side)
            for ang in (-0.45, -0.1, 0.25):
                d = side * np.cos(ang) * ex + np.sin(ang) * up
                sh.stroke(np.array([start, start + 0.24 * u * d]), 0.34 * k6, 0.03)
            a = p(lm[low[0]], 0.05, -0.12, side)
            b = p(lm[low[1]], -0.02, -0.1, side)
            sh.stroke(arc(a, b, -0.04), 0.3 * k6, 0.035)
            cheek = 0.45 * lm[1 if side < 0 else 15] + 0.35 * lm[31 if side < 0 else 35] + 0.2 * lm[low[1]]
            sh.blob(cheek, (0.22, 0.14), 0.0, 0.14 * k6, dark=False)
    kn = max(0.6 * k6, k12, 0.8 * levels.get(9, 0.0))
    if kn > 0:  # nasolabial folds
        for side, nose, corner in ((-1, 31, 48), (1, 35, 54)):
            a = p(lm[nose], 0.1, 0.05, side)
            b = p(lm[corner], 0.1, -0.08, side)
            curve = arc(a, b, 0.0) + side * 0.04 * u * ex * np.sin(np.linspace(0, np.pi, 7))[:, None]
            sh.stroke(curve, 0.3 * kn, 0.04)
            sh.stroke(curve, 0.15 * kn, 0.1, fine=False)
            sh.stroke(curve + side * 0.06 * u * ex, 0.1 * kn, 0.05, dark=False)
    if k12 > 0:  # dimple shadows just outside the corners, cheek highlight
        for side, corner in ((-1, 48), (1, 54)):
            sh.blob(p(lm[corner], 0.06, 0.0, side), (0.05, 0.08), 0.0, 0.22 * k12, dark=True, fine=True)
            cheek = (
                0.45 * lm[1 if side < 0 else 15]
                + 0.35 * lm[31 if side < 0 else 35]
                + 0.2 * lm[40 if side < 0 else 47]
            )
            sh.blob(cheek, (0.2, 0.13), 0.0, 0.08 * k12, dark=False)
    k = levels.get(9, 0.0)
    if k > 0:  # wrinkles across the nose bridge ("bunny lines") and along its sides
        for j, t in enumerate((0.35, 0.55, 0.75)):
            c = (1 - t) * lm[27] + t * lm[29]
            half = 0.07 + 0.02 * j
            a = c - half * u * ex - 0.02 * u * up
            b = c + half * u * ex - 0.02 * u * up
            sh.stroke(arc(a, b, 0.035), 0.32 * k * (1 - 0.15 * j), 0.02)
            sh.stroke(arc(a, b, 0.035) - 0.03 * u * up, 0.07 * k, 0.02, dark=False)
        for side, eye in ((-1, 39), (1, 42)):
            for off in (0.0, 0.05):
                a = p(lm[eye], -0.04 + off, -0.1 - off, side)
                b = p(lm[eye], 0.0 + off, -0.3 - off, side)
                sh.stroke(np.array([a, b]), 0.3 * k, 0.022)
        sh.blob(
            0.5 * (lm[27] + lm[30]), (0.12, 0.2), np.degrees(np.arctan2(ex[1], ex[0])), 0.1 * k, dark=True
        )
    k = levels.get(15, 0.0)
    if k > 0:  # marionette shadows below the corners
        for side, corner in ((-1, 48), (1, 54)):
            a = p(lm[corner], 0.02, -0.03, side)
            b = p(lm[corner], 0.06, -0.22, side)
            sh.stroke(np.array([a, b]), 0.3 * k, 0.035)
            sh.stroke(np.array([a, b]), 0.12 * k, 0.08, fine=False)
    k = levels.get(20, 0.0)
    if k > 0:  # tension folds beyond the stretched corners, flattened lips
        for side, corner in ((-1, 48), (1, 54)):
            a = p(lm[corner], 0.04, 0.0, side)
            b = p(lm[corner], 0.18, -0.06, side)
            sh.stroke(np.array([a, b]), 0.3 * k, 0.03)
            sh.stroke(np.array([a, b]) + 0.04 * u * up, 0.1 * k, 0.03, dark=False)
    k = levels.get(23, 0.0)
    if k > 0:  # pressed lip line, bulging lip borders, small wrinkles above the upper lip
        sh.stroke(lm[[60, 61, 62, 63, 64]], 0.4 * k, 0.03)
        sh.stroke(lm[[48, 49, 50, 51, 52, 53, 54]] + 0.02 * u * up, 0.12 * k, 0.04, dark=False)
        for t in (0.3, 0.45, 0.55, 0.7):
            base = (1 - t) * lm[49] + t * lm[53]
            sh.stroke(np.array([base + 0.03 * u * up, base + 0.1 * u * up]), 0.18 * k, 0.02)


def render(face: SourceFace, aus: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """The face with `aus` (AU -> intensity 0..5) rendered; returns (RGB uint8 image of the same
    size, landmarks (68, 2) float32 after the warp). AU26 (jaw drop) also parts the lips.
    Deterministic: same input, same bytes. Unknown AUs raise KeyError."""
    unknown = [au for au, v in aus.items() if v > 0 and au not in MOVES]
    if unknown:
        raise KeyError(f"AUs not renderable: {unknown}; renderable: {RENDERABLE_AUS}")
    levels = {int(au): _level(v) for au, v in aus.items() if v > 0}
    lm0 = np.asarray(face.landmarks, np.float64)
    if not levels:
        return face.image.copy(), face.landmarks.astype(np.float32).copy()
    h, w = face.image.shape[:2]
    local = sum((MOVES[au] * lv for au, lv in levels.items()), np.zeros((N_FACE_POINTS, 2)))
    src, dst = _moved_points(lm0, local, w, h)
    out = warp_image(face.image, src, dst).astype(np.float32)
    lm = dst[:68]
    _, _, u = face_frame(lm)
    sh = Shader(h, w, u)
    _shade(sh, lm, levels)
    out = sh.apply(out)
    opened = mouth.inner_gap(lm) - max(mouth.inner_gap(lm0), 0.0)
    if opened > 0.5:
        mouth.fill_mouth(out, lm, face.mouth_patch, (opened - 0.5) / 1.5)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), lm.astype(np.float32)


def emotion_aus(emotion: str, rng: np.random.Generator) -> dict[int, float]:
    """AU intensities for an emotion: its EMOTION_AUS weights x a random apex in [2.5, 5],
    plus small noise, clipped to 0..5 and rounded to 0.01. neutral -> {}."""
    weights = EMOTION_AUS[emotion]
    if not weights:
        return {}
    apex = rng.uniform(2.5, 5.0)
    noise = rng.normal(0.0, 0.25, len(weights))
    return {
        au: round(float(np.clip(wt * apex + n, 0.0, 5.0)), 2)
        for (au, wt), n in zip(sorted(weights.items()), noise)
    }


# --------------------------------------------------------------------------- sources


def _mouth_metrics(lm: np.ndarray) -> dict[str, float]:
    """Smile and opening in face units: corner lift above the lip line, mouth width, inner gap."""
    ex, ey, u = face_frame(lm)
    local = np.stack([(lm - lm[27]) @ ex, (lm - lm[27]) @ ey], -1) / u
    lip_line = 0.5 * (local[62, 1] + local[66, 1])
    return {
        "lift": float(lip_line - 0.5 * (local[48, 1] + local[54, 1])),
        "width": float(local[54, 0] - local[48, 0]),
        "gap": float(np.mean(local[[67, 66, 65], 1] - local[[61, 62, 63], 1])),
        # nose tip off the eyes' midpoint: a turned head
        "yaw": float(local[30, 0] - 0.5 * (local[36:42, 0].mean() + local[42:48, 0].mean())),
    }


# the neutral template (face units): corners about level with the lip line, lips closed
NEUTRAL_LIFT, NEUTRAL_WIDTH, NEUTRAL_GAP = 0.03, 0.85, 0.0


def _neutralize(image: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Warp the face's own smile/opening back to the neutral template; see the module doc."""
    lm = np.asarray(lm, np.float64)
    m = _mouth_metrics(lm)
    dc = max(0.0, m["lift"] - NEUTRAL_LIFT)
    dw = max(0.0, m["width"] - NEUTRAL_WIDTH) / 2
    g = max(0.0, m["gap"] - NEUTRAL_GAP)
    orig_smile = 5 * dc / 0.16
    left: dict[int, tuple[float, float]] = {
        48: (-dw, -dc),
        60: (-0.9 * dw, -dc),
        49: (-0.5 * dw, -0.45 * dc),
        59: (-0.5 * dw, -0.55 * dc),
        61: (-0.3 * dw, -0.2 * dc - 0.5 * g),
        67: (-0.3 * dw, -0.25 * dc + 0.5 * g),
        50: (0.0, -0.45 * g),
        51: (0.0, -0.45 * g),
        62: (0.0, -0.5 * g),
        66: (0.0, 0.5 * g),
        58: (0.0, 0.5 * g),
        57: (0.0, 0.5 * g),
        V["mouthside_l"]: (-0.5 * dw, -0.6 * dc),
        V["cheek_l"]: (0.0, -0.3 * dc),
    }
    if dc == 0 and dw == 0 and g == 0:
        out, new_lm = image.copy(), lm
    else:
        h, w = image.shape[:2]
        src, dst = _moved_points(lm, _expand_moves(left), w, h)
        out = warp_image(image, src, dst)
        new_lm = dst[:68]
    if m["gap"] > 0.03:  # hide what is left of the teeth; draw the closed lip line
        mask = np.zeros(out.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(new_lm[mouth.INNER]).astype(np.int32)], 255)
        cv2.polylines(mask, [np.round(new_lm[mouth.UPPER]).astype(np.int32)], False, 255, 2)
        mask |= _teeth_mask(out, new_lm)
        out = cv2.inpaint(out, cv2.dilate(mask, np.ones((3, 3), np.uint8)), 3, cv2.INPAINT_TELEA)
        _, _, u = face_frame(new_lm)
        sh = Shader(*out.shape[:2], u)
        line = 0.5 * (new_lm[mouth.UPPER] + new_lm[mouth.LOWER])
        sh.stroke(line, 0.35, 0.025)
        out = np.clip(sh.apply(out.astype(np.float32)) + 0.5, 0, 255).astype(np.uint8)
    base: dict[int, float] = {}
    seen = detect_landmarks(out)
    if seen is not None:
        r = _mouth_metrics(seen.astype(np.float64))
        au12 = 5 * max(0.0, r["lift"] - NEUTRAL_LIFT - 0.03) / 0.16
        au25 = 5 * max(0.0, r["gap"] - 0.04) / 0.13
        if au12 >= 0.25:
            base[12] = round(min(5.0, au12), 2)
        if au25 >= 0.25:
            base[25] = round(min(5.0, au25), 2)
    if orig_smile >= 1.0:  # cheek bunching / crow's feet of a real smile stay in the texture
        base[6] = round(min(1.5, 0.3 * orig_smile), 2)
    return out, new_lm.astype(np.float32), base


def _teeth_mask(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Bright, unsaturated pixels (teeth) inside the outer-lip polygon: dlib's inner-lip points
    often sit on the teeth, so the geometric closing alone leaves some showing."""
    lips = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(lm[48:60]).astype(np.int32)], 255)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    inside = lips > 0
    if inside.sum() < 10:
        return np.zeros_like(lips)
    sat, val = hsv[..., 1].astype(np.float32), hsv[..., 2].astype(np.float32)
    med_s, med_v = np.median(sat[inside]), np.median(val[inside])
    teeth = inside & (sat < 0.75 * med_s) & (val > 0.9 * med_v)
    return cv2.dilate(teeth.astype(np.uint8) * 255, np.ones((3, 3), np.uint8))


def _aligned_crop(image: np.ndarray, lm: np.ndarray, box_w: float) -> tuple[np.ndarray, np.ndarray]:
    """Upright square crop around the face; returns (crop, 2x3 affine image -> crop)."""
    le, re = lm[36:42].mean(0), lm[42:48].mean(0)
    angle = float(np.degrees(np.arctan2(re[1] - le[1], re[0] - le[0])))
    center = 0.5 * (0.5 * (le + re) + 0.5 * (lm[48] + lm[54]))
    scale = SIZE / (MARGIN * box_w)
    m = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, scale)
    m[:, 2] += np.array([SIZE / 2, SIZE * 0.53]) - center
    crop = cv2.warpAffine(
        image,
        m,
        (SIZE, SIZE),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return crop, m


def _yunet_confirms(image: np.ndarray) -> bool:
    from ferlab.weights import weight_path

    h, w = image.shape[:2]
    det = cv2.FaceDetectorYN.create(
        str(weight_path("face_detection_yunet_2023mar.onnx")), "", (w, h), 0.6, 0.3, 5000
    )
    _, faces = det.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if faces is None:
        return False
    return any(
        abs(f[0] + f[2] / 2 - w / 2) < w * 0.2 and abs(f[1] + f[3] / 2 - h / 2) < h * 0.25 for f in faces
    )


def _faces_in(image: np.ndarray, best_only: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(aligned crop, crop landmarks) of every confirmed face, left to right (or only the
    detection dlib scores highest)."""
    found = []
    for box, _score in detect_faces(image)[: 1 if best_only else None]:
        lm = predict_landmarks(image, box)
        crop, m = _aligned_crop(image, lm.astype(np.float64), box[2] - box[0])
        # refit on the crop from the mapped box (re-detection can miss small, tilted faces)
        seen = detect_landmarks(crop)
        if seen is None:
            c = m @ np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
            half = SIZE / MARGIN / 2
            seen = predict_landmarks(crop, (c[0] - half, c[1] - half, c[0] + half, c[1] + half))
        if _yunet_confirms(crop):
            found.append(((box[0] + box[2]) / 2, crop, seen))
    return [(c, s) for _, c, s in sorted(found, key=lambda t: t[0])]


def _read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _default_photos() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    from ferlab.weights import weight_path

    return [("astronaut", data.astronaut()), ("t1", _read_rgb(weight_path("insightface_t1.jpg")))]


def load_source_faces(photos: Sequence[str | Path] | None = None) -> list[SourceFace]:
    """Neutralized source faces: by default the astronaut + the 6 faces of insightface's t1.jpg
    (identities "astronaut", "t1_0".."t1_5", left to right); else every face found in `photos`
    (identities "<file stem>" or "<file stem>_<i>"). The mouth patch comes from the face with
    the largest inner-lip opening (falls back to t1.jpg's laughing face, or None)."""
    named = _default_photos() if photos is None else [(Path(p).stem, _read_rgb(p)) for p in photos]
    raw: list[tuple[str, np.ndarray, np.ndarray]] = []
    for stem, img in named:
        faces = _faces_in(img, best_only=stem == "astronaut")  # its suit badge fools dlib
        for i, (crop, lm) in enumerate(faces):
            raw.append((stem if len(faces) == 1 else f"{stem}_{i}", crop, lm))
    patch = _best_mouth_patch(raw)
    if patch is None and photos is not None:
        patch = _best_mouth_patch([(s, c, lm) for s, img in _default_photos() for c, lm in _faces_in(img)])
    out = []
    for identity, crop, lm in raw:
        neutral, nlm, base = _neutralize(crop, lm)
        out.append(SourceFace(identity, neutral, nlm, base, patch))
    return out


def _best_mouth_patch(raw: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray | None:
    best, best_gap = None, 0.08  # a real opening (teeth visible), in face units
    for _, crop, lm in raw:
        m = _mouth_metrics(lm.astype(np.float64))
        # only near-frontal faces: dlib's lip points are unreliable on turned heads
        if m["gap"] > best_gap and abs(m["yaw"]) < 0.15:
            gap = m["gap"]
            best, best_gap = mouth.extract_patch(crop, lm), gap
    return best


# --------------------------------------------------------------------------- identities


def _mirror(face: SourceFace) -> SourceFace:
    w = face.image.shape[1]
    lm = face.landmarks[MIRROR_68].copy()
    lm[:, 0] = w - 1 - lm[:, 0]
    patch = None if face.mouth_patch is None else np.ascontiguousarray(face.mouth_patch[:, ::-1])
    return replace(face, image=np.ascontiguousarray(face.image[:, ::-1]), landmarks=lm, mouth_patch=patch)


def _tone(face: SourceFace, gains: np.ndarray, gamma: float, sidelight: float) -> SourceFace:
    def apply(img: np.ndarray, lit: bool) -> np.ndarray:
        f = (img.astype(np.float32) / 255.0) ** gamma * gains.astype(np.float32)
        if lit and sidelight:
            ramp = np.linspace(1 - sidelight, 1 + sidelight, img.shape[1], dtype=np.float32)
            f = f * ramp[None, :, None]
        return np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)

    patch = None if face.mouth_patch is None else apply(face.mouth_patch, False)
    return replace(face, image=apply(face.image, True), mouth_patch=patch)


def _reshape(face: SourceFace, width: float, length: float, eyes: float) -> SourceFace:
    """Face-shape change by TPS: jaw/cheeks wider or narrower, chin longer, eyes apart."""
    lm = face.landmarks.astype(np.float64)
    local = np.zeros((N_FACE_POINTS, 2))
    for i in list(range(0, 17)) + [V["cheek_l"], V["cheek_r"], V["temple_l"], V["temple_r"]]:
        local[i, 0] = width
    for i, f in zip(range(4, 13), (0.2, 0.45, 0.7, 0.9, 1.0, 0.9, 0.7, 0.45, 0.2)):
        local[i, 1] -= length * f
    local[V["chin"], 1] -= length
    for i in range(36, 48):
        local[i, 0] += eyes
    for i in range(17, 27):
        local[i, 0] += eyes
    local[SIDE == 0, 0] = 0.0
    h, w = face.image.shape[:2]
    src, dst = _moved_points(lm, local, w, h)
    return replace(face, image=warp_image(face.image, src, dst), landmarks=dst[:68].astype(np.float32))


_VARIANTS = ("mirror", "warm", "cool", "dark", "light", "sidelit", "wide", "narrow", "long")


def _variant(face: SourceFace, kind: str, rng: np.random.Generator) -> SourceFace:
    if kind == "mirror":
        return _mirror(face)
    if kind == "warm":
        return _tone(face, np.array([1.08, 1.0, 0.86]) * rng.uniform(0.97, 1.03), 1.0, 0.0)
    if kind == "cool":
        return _tone(face, np.array([0.9, 0.98, 1.08]) * rng.uniform(0.97, 1.03), 1.0, 0.0)
    if kind == "dark":
        return _tone(face, np.array([0.8, 0.72, 0.66]) * rng.uniform(0.95, 1.0), rng.uniform(1.15, 1.35), 0.0)
    if kind == "light":
        return _tone(face, np.array([1.0, 1.0, 1.0]), rng.uniform(0.75, 0.85), 0.0)
    if kind == "sidelit":
        return _tone(face, np.ones(3), 1.0, float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.3)))
    if kind == "wide":
        return _reshape(face, rng.uniform(0.07, 0.11), 0.0, rng.uniform(0.01, 0.03))
    if kind == "narrow":
        return _reshape(face, -rng.uniform(0.07, 0.1), 0.0, -rng.uniform(0.01, 0.02))
    if kind == "long":
        return _reshape(face, -0.03, rng.uniform(0.1, 0.16), 0.0)
    raise ValueError(kind)


def identity_variants(faces: list[SourceFace], per_face: int, rng: np.random.Generator) -> list[SourceFace]:
    """`per_face` new identities ("subjects") per face: mirror, skin tone/lighting, face shape.
    Identities are "<source>_<kind>" (kinds combined with '+' beyond the 9 single kinds).
    Only the variants are returned; deterministic for a given rng state."""
    out = []
    for face in faces:
        kinds = list(rng.permutation(_VARIANTS))
        chosen: list[list[str]] = [[k] for k in kinds[:per_face]]
        while len(chosen) < per_face:  # combine a shape kind with a tone kind
            a = str(rng.choice(["mirror", "wide", "narrow", "long"]))
            b = str(rng.choice(["warm", "cool", "dark", "light", "sidelit"]))
            if [a, b] not in chosen:
                chosen.append([a, b])
        for combo in chosen:
            v = face
            for kind in combo:
                v = _variant(v, str(kind), rng)
            out.append(replace(v, identity=f"{face.identity}_{'+'.join(str(k) for k in combo)}"))
    return out


# --------------------------------------------------------------------------- contact sheet


def contact_sheet(
    face: SourceFace, path: str | Path, intensities: Sequence[float] = (0, 3, 5), cell: int = 192
) -> Path:
    """PNG grid: one row per renderable AU, one column per intensity, labelled."""
    rows = []
    for au in RENDERABLE_AUS:
        cells = []
        for v in intensities:
            img, _ = render(face, {au: v})
            img = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_AREA)
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            cv2.putText(
                bgr, f"AU{au} @ {v:g}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA
            )
            cv2.putText(
                bgr,
                f"AU{au} @ {v:g}",
                (6, 20),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.55,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            cells.append(bgr)
        rows.append(np.hstack(cells))
    sheet = np.vstack(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"cannot write {path}")
    return path


def face_seed(identity: str) -> int:
    """A stable per-identity integer (for callers deriving rngs from identities)."""
    return zlib.crc32(identity.encode())
