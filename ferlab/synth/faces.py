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
     The widest laugh (t1_3) is kept: it neutralizes only partly, which `base_aus` reports.

  4. Near-frontal faces only (`head_yaw`, MAX_SOURCE_YAW): default faces turned nearly to
     profile are not loaded. Outside the face (hair, background, neighbours) each source is
     softly blurred, so the face is the subject.

Demo data: every AU is exaggerated (MOVE_GAIN, SHADE_GAIN, `_level`: 70% of the effect at
intensity 2) so that a present AU (>= 2) is unmistakable on every face; eyelids and lips keep
their order (`_keep_order`).

`render` moves control points (landmarks + virtual forehead/cheek/chin points, jaw and image
border pinned unless an AU moves them) with a thin-plate spline (warp.py), shades furrows,
wrinkles and highlights multiplicatively (shading.py), and fills open mouths from the real patch
placed between the warped inner-lip landmarks (mouth.py).
"""

from __future__ import annotations

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
    virtual_points,
)
from ferlab.synth.shading import Shader
from ferlab.synth.warp import warp_image

SIZE = 256
MARGIN = 2.2

RENDERABLE_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 20, 23, 25, 26)

# Ekman & Friesen (as seed 002 tabulates them): relative weights of the AUs we render. AU26 opens the lips, so
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

# Demo data exaggerates every AU: the moves below (about natural size) are scaled by MOVE_GAIN,
# the shading amounts in `_shade` by SHADE_GAIN, and `_level` gives 70% of the effect at
# intensity 2 already, so that a present AU is unmistakable on every face.
MOVE_GAIN = 1.25
SHADE_GAIN = 1.35

# Control-point moves at intensity 5, for image-left/midline points (mirrored to the right):
# (outward, upward) in units of the inter-ocular distance.
_MOVES_LEFT: dict[int, dict[int, tuple[float, float]]] = {
    1: {
        21: (-0.04, 0.32),
        20: (-0.015, 0.25),
        19: (0.0, 0.13),
        18: (0.0, 0.04),
        V["forehead_mid"]: (0.0, 0.11),
        V["forehead_in_l"]: (0.0, 0.09),
        V["glabella"]: (0.0, 0.1),
    },
    2: {
        17: (0.04, 0.3),
        18: (0.03, 0.32),
        19: (0.0, 0.22),
        20: (0.0, 0.08),
        V["forehead_out_l"]: (0.0, 0.1),
        V["temple_l"]: (0.0, 0.04),
    },
    4: {
        17: (-0.03, -0.1),
        18: (-0.05, -0.15),
        19: (-0.08, -0.19),
        20: (-0.1, -0.22),
        21: (-0.13, -0.23),
        37: (0.0, -0.05),
        38: (0.0, -0.06),
        V["glabella"]: (0.0, -0.08),
        V["forehead_in_l"]: (-0.04, -0.04),
        V["forehead_mid"]: (0.0, -0.03),
    },
    5: {
        37: (0.0, 0.2),
        38: (0.0, 0.2),
        36: (0.0, 0.02),
        39: (0.0, 0.01),
        17: (0.0, 0.03),
        18: (0.0, 0.05),
        19: (0.0, 0.07),
        20: (0.0, 0.07),
        21: (0.0, 0.04),
    },
    6: {
        40: (0.0, 0.11),
        41: (0.0, 0.11),
        36: (0.015, 0.04),
        39: (0.0, 0.015),
        37: (0.0, -0.02),
        38: (0.0, -0.02),
        V["cheek_l"]: (0.03, 0.2),
        V["mouthside_l"]: (0.015, 0.06),
        1: (0.01, 0.03),
        2: (0.01, 0.03),
    },
    9: {
        31: (0.0, 0.1),
        32: (0.0, 0.085),
        33: (0.0, 0.07),
        30: (0.0, 0.04),
        29: (0.0, 0.02),
        49: (0.0, 0.1),
        50: (0.0, 0.13),
        51: (0.0, 0.14),
        48: (0.0, 0.04),
        60: (0.0, 0.05),
        61: (0.0, 0.1),
        62: (0.0, 0.11),
        67: (0.0, 0.09),
        66: (0.0, 0.1),
        59: (0.0, 0.05),
        58: (0.0, 0.05),
        57: (0.0, 0.04),
        21: (-0.02, -0.05),
        20: (-0.01, -0.03),
        37: (0.0, -0.02),
        38: (0.0, -0.02),
        40: (0.0, 0.04),
        41: (0.0, 0.04),
        V["glabella"]: (0.0, -0.04),
        V["cheek_l"]: (0.0, 0.07),
    },
    12: {
        48: (0.14, 0.22),
        60: (0.12, 0.2),
        49: (0.06, 0.1),
        59: (0.06, 0.12),
        61: (0.03, 0.05),
        67: (0.03, 0.07),
        50: (0.015, 0.03),
        58: (0.015, 0.04),
        V["mouthside_l"]: (0.11, 0.14),
        V["cheek_l"]: (0.03, 0.07),
    },
    15: {
        48: (0.03, -0.2),
        60: (0.03, -0.17),
        49: (0.0, -0.07),
        59: (0.0, -0.1),
        61: (0.0, -0.03),
        67: (0.0, -0.04),
        58: (0.0, -0.03),
        V["mouthside_l"]: (0.015, -0.1),
        V["chin"]: (0.0, 0.03),
    },
    20: {
        48: (0.22, -0.015),
        60: (0.19, -0.01),
        49: (0.1, -0.005),
        59: (0.1, -0.015),
        61: (0.045, 0.0),
        67: (0.045, 0.0),
        50: (0.03, -0.045),
        58: (0.03, 0.05),
        51: (0.0, -0.045),
        57: (0.0, 0.05),
        V["mouthside_l"]: (0.13, -0.01),
    },
    23: {  # lips pressed thin and narrow (clamped to the face's own lips, see _keep_order)
        49: (-0.04, -0.08),
        50: (-0.01, -0.09),
        51: (0.0, -0.09),
        59: (-0.04, 0.1),
        58: (-0.01, 0.12),
        57: (0.0, 0.12),
        48: (-0.11, 0.0),
        60: (-0.1, 0.0),
        61: (-0.05, -0.01),
        62: (0.0, -0.015),
        67: (-0.05, 0.01),
        66: (0.0, 0.015),
        V["mouthside_l"]: (-0.04, 0.0),
    },
    25: {  # lips part: teeth show in a moderate opening, the jaw stays (that is AU26)
        61: (0.0, 0.06),
        62: (0.0, 0.07),
        67: (0.0, -0.13),
        66: (0.0, -0.14),
        49: (0.0, 0.035),
        50: (0.0, 0.04),
        51: (0.0, 0.04),
        59: (0.0, -0.1),
        58: (0.0, -0.11),
        57: (0.0, -0.11),
        V["chin"]: (0.0, -0.02),
    },
    26: {  # jaw drop: chin and lower lip far down, a long face, the mouth an oval
        66: (0.0, -0.5),
        67: (0.0, -0.45),
        57: (0.0, -0.51),
        58: (0.0, -0.48),
        59: (0.0, -0.37),
        48: (-0.04, -0.14),
        60: (-0.04, -0.13),
        61: (0.0, 0.025),
        62: (0.0, 0.025),
        V["chin"]: (0.0, -0.5),
        8: (0.0, -0.47),
        7: (0.0, -0.43),
        6: (0.0, -0.34),
        5: (0.0, -0.22),
        4: (0.0, -0.11),
        3: (0.0, -0.04),
        V["mouthside_l"]: (-0.02, -0.19),
    },
}


def _expand_moves(left: dict[int, tuple[float, float]]) -> np.ndarray:
    """(N_FACE_POINTS, 2) local (outward, upward) moves, mirrored onto the right half."""
    out = np.zeros((N_FACE_POINTS, 2))
    for i, (dx, dy) in left.items():
        out[i] = (dx, dy)
        out[MIRROR[i]] = (dx, dy)
    return out


# AU4/AU9 stay at natural size: pulled further, dlib's face detector loses some faces
MOVES: dict[int, np.ndarray] = {
    au: (1.0 if au in (4, 9) else MOVE_GAIN) * _expand_moves(m) for au, m in _MOVES_LEFT.items()
}


@dataclass
class SourceFace:
    identity: str
    image: np.ndarray  # RGB uint8, square, SIZE px, the NEUTRALIZED face with margin
    landmarks: np.ndarray  # (68, 2) float32, dlib order, of the neutralized face in `image`
    base_aus: dict[int, float]  # AUs the neutralized source still shows; labels add these
    mouth_patch: np.ndarray | None  # rectified RGB mouth interior from a real open mouth


# --------------------------------------------------------------------------- rendering


def _level(intensity: float) -> float:
    """Intensity 0..5 -> 0..1 effect strength. Demo data: an AU must be unmistakable as soon as
    it counts as present (intensity 2), and clearly weaker below: the strength rises steeply
    (cubic) to 0.7 at 2 (0.09 at 1, 0.3 at 1.5), then linearly to 1 at 5."""
    i = float(np.clip(intensity, 0.0, 5.0))
    return 0.7 * (i / 2.0) ** 3 if i < 2.0 else 0.7 + 0.3 * (i - 2.0) / 3.0


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


# (upper point, lower point, least fraction of the source's gap kept): eyelids never cross,
# lips never fold over (strong AU6 on narrow eyes, AU23 on thin lips)
_ORDER = [(t, b, 0.3) for t, b in ((37, 41), (38, 40), (43, 47), (44, 46))]
_ORDER += [(t, b, 0.3) for t, b in ((50, 61), (51, 62), (52, 63), (67, 58), (66, 57), (65, 56))]


def _keep_order(src: np.ndarray, dst: np.ndarray, ey: np.ndarray) -> None:
    """Push apart (in place, along the face's down vector `ey`) point pairs whose vertical gap
    shrank below its floor."""
    for top, bot, keep in _ORDER:
        gap0 = float((src[bot] - src[top]) @ ey)
        gap1 = float((dst[bot] - dst[top]) @ ey)
        floor = keep * max(gap0, 0.0)
        if gap1 < floor:
            half = 0.5 * (floor - gap1)
            dst[top] -= half * ey
            dst[bot] += half * ey


def _skin_colors(image: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median RGB of small skin patches: the cheeks (for painted sclera) and the skin just
    above the upper lip (for rolled-in lips)."""
    vp = virtual_points(lm)
    ex, ey, u = face_frame(lm)
    h, w = image.shape[:2]
    r = max(2, int(0.06 * u))

    def median(centres: list[np.ndarray]) -> np.ndarray:
        pix = []
        for c in centres:
            x, y = int(round(c[0])), int(round(c[1]))
            pix.append(
                image[max(0, y - r) : min(h, y + r + 1), max(0, x - r) : min(w, x + r + 1)].reshape(-1, 3)
            )
        return np.median(np.concatenate(pix), axis=0).astype(np.float32)

    above = [lm[i] - 0.1 * u * ey for i in (49, 53)]
    return median([vp[V["cheek_l"] - 68], vp[V["cheek_r"] - 68]]), median(above)


def _shade(
    sh: Shader, lm: np.ndarray, levels: Mapping[int, float], skin: np.ndarray, lip_skin: np.ndarray
) -> None:
    """Furrows, wrinkles, highlights per AU, drawn from the warped landmarks. Dark and wide
    enough to show in a 128 px face crop."""
    ex, ey, u = face_frame(lm)
    up = -ey
    roll = float(np.degrees(np.arctan2(ex[1], ex[0])))

    def p(base: np.ndarray, out: float, upw: float, side: float) -> np.ndarray:
        return base + side * out * u * ex + upw * u * up

    def arc(a: np.ndarray, b: np.ndarray, bulge: float, n: int = 7) -> np.ndarray:
        t = np.linspace(0, 1, n)[:, None]
        mid = 0.5 * (a + b) + bulge * u * up
        return (1 - t) ** 2 * a + 2 * (1 - t) * t * mid + t**2 * b

    brow_mid = 0.5 * (lm[21] + lm[22])
    k = levels.get(1, 0.0)
    if k > 0:  # central forehead wrinkles, curved up in the middle; oblique inner brows
        for i, h in enumerate((0.28, 0.43, 0.58)):
            a = p(lm[20], 0.0, h, -1)
            b = p(lm[23], 0.0, h, 1)
            sh.stroke(arc(a, b, 0.07), 0.5 * k * (1 - 0.12 * i), 0.04)
            sh.stroke(arc(a, b, 0.07) + 0.045 * u * up, 0.18 * k, 0.035, dark=False)
        sh.stroke(arc(p(lm[20], 0.0, 0.2, -1), p(lm[23], 0.0, 0.2, 1), 0.08), 0.18 * k, 0.12, fine=False)
    k = levels.get(2, 0.0)
    if k > 0:  # lateral forehead wrinkles above each outer brow, arched brows
        for side, (o, i_) in ((-1, (17, 20)), (1, (26, 23))):
            for j, h in enumerate((0.24, 0.38, 0.52)):
                a = p(lm[o], 0.02, h - 0.06, side)
                b = p(lm[i_], -0.02, h + 0.02, side)
                sh.stroke(arc(a, b, 0.06), 0.48 * k * (1 - 0.12 * j), 0.04)
                sh.stroke(arc(a, b, 0.06) + 0.045 * u * up, 0.16 * k, 0.035, dark=False)
            # the stretched upper eyelid catches light under the raised outer brow
            eye = lm[36:42].mean(0) if side < 0 else lm[42:48].mean(0)
            sh.blob(p(eye, 0.08, 0.17, side), (0.16, 0.06), roll, 0.16 * k, dark=False)
    k = levels.get(4, 0.0)
    if k > 0:  # glabella: deep vertical furrows with ridges, bunched brows, shadow under them
        for side in (-1, 1):
            top = p(brow_mid, 0.07, 0.14, side)
            bot = p(brow_mid, 0.04, -0.16, side)
            line = np.array([top, 0.5 * (top + bot) + side * 0.015 * u * ex, bot])
            sh.stroke(line, 0.55 * k, 0.04)
            sh.stroke(line, 0.3 * k, 0.1, fine=False)
            sh.stroke(line + side * 0.05 * u * ex, 0.18 * k, 0.035, dark=False)
        sh.stroke(
            np.array([p(lm[27], 0.08, 0.04, -1), lm[27] + 0.06 * u * up, p(lm[27], 0.08, 0.04, 1)]),
            0.25 * k,
            0.035,
        )
        for brow, eye in ((slice(17, 22), slice(36, 42)), (slice(22, 27), slice(42, 48))):
            c = 0.5 * (lm[brow].mean(0) + lm[eye].mean(0))
            sh.blob(c, (0.3, 0.1), roll, 0.3 * k, dark=True)
            sh.stroke(lm[brow], 0.35 * k, 0.06)  # thicker, darker lowered brows
    k = levels.get(5, 0.0)
    if k > 0:  # widened eyes: white sclera above the iris under a dark upper-lid margin
        sclera = np.clip(np.float32(1.25) * skin.mean() + 25.0, 110.0, 245.0) * np.float32([1.0, 0.98, 0.96])
        for eye in ((36, 37, 38, 39), (42, 43, 44, 45)):
            lid = lm[list(eye)]
            lo = lm[[eye[0], 41 if eye[0] == 36 else 47, 40 if eye[0] == 36 else 46, eye[3]]]
            height = np.clip((lo[1:3, 1].mean() - lid[1:3, 1].mean()) * 0.55, 0.0, 0.09 * u)
            inner = lid[1:3] + height * ey
            band = np.array([0.8 * lid[0] + 0.2 * lid[1], lid[1], lid[2], 0.8 * lid[3] + 0.2 * lid[2]])
            band = np.concatenate([band, inner[::-1]])
            sh.paint(band, min(1.0, 1.5 * k), sclera)
            sh.stroke(lid, 0.6 * k, 0.035)
            sh.stroke(lid + 0.09 * u * up, 0.2 * k, 0.06, dark=False)  # stretched lid skin
    k6 = levels.get(6, 0.0)
    k12 = levels.get(12, 0.0)
    if k6 > 0:  # crow's feet, lower-lid bulge and furrow, raised cheek highlight and its shadow
        for side, corner, low in ((-1, 36, (41, 40)), (1, 45, (46, 47))):
            start = p(lm[corner], 0.06, 0.0, side)
            for ang in (-0.5, -0.15, 0.2):
                d = side * np.cos(ang) * ex + np.sin(ang) * up
                sh.stroke(np.array([start, start + 0.3 * u * d]), 0.75 * k6, 0.045)
            sh.blob(p(lm[corner], 0.16, 0.0, side), (0.14, 0.12), roll, 0.3 * k6, dark=True)
            a = p(lm[low[0]], 0.06, -0.06, side)
            b = p(lm[low[1]], -0.03, -0.05, side)
            sh.stroke(arc(a, b, -0.03), 0.25 * k6, 0.06, dark=False)  # lower-lid bulge
            eye = [36, 41, 40, 39] if side < 0 else [42, 47, 46, 45]
            sh.stroke(lm[eye], 0.45 * k6, 0.03)  # the raised lower-lid margin
            a = p(lm[low[0]], 0.08, -0.19, side)
            b = p(lm[low[1]], -0.03, -0.17, side)
            sh.stroke(arc(a, b, -0.05), 0.75 * k6, 0.05)  # infraorbital furrow
            sh.stroke(arc(a, b, -0.05), 0.3 * k6, 0.12, fine=False)
            cheek = 0.45 * lm[1 if side < 0 else 15] + 0.35 * lm[31 if side < 0 else 35] + 0.2 * lm[low[1]]
            sh.blob(cheek, (0.22, 0.14), 0.0, 0.35 * k6, dark=False)
            sh.blob(cheek - 0.22 * u * up, (0.24, 0.08), 0.0, 0.3 * k6, dark=True)
    kn = max(0.8 * k6, k12, levels.get(9, 0.0))
    if kn > 0:  # nasolabial folds
        for side, nose, corner in ((-1, 31, 48), (1, 35, 54)):
            a = p(lm[nose], 0.1, 0.05, side)
            b = p(lm[corner], 0.1, -0.08, side)
            curve = arc(a, b, 0.0) + side * 0.05 * u * ex * np.sin(np.linspace(0, np.pi, 7))[:, None]
            sh.stroke(curve, 0.55 * kn, 0.05)
            sh.stroke(curve, 0.25 * kn, 0.12, fine=False)
            sh.stroke(curve + side * 0.07 * u * ex, 0.18 * kn, 0.06, dark=False)
    if k12 > 0:  # dimple shadows just outside the corners, cheek highlight
        for side, corner in ((-1, 48), (1, 54)):
            sh.blob(p(lm[corner], 0.05, 0.01, side), (0.05, 0.09), 0.0, 0.4 * k12, dark=True, fine=True)
            cheek = (
                0.45 * lm[1 if side < 0 else 15]
                + 0.35 * lm[31 if side < 0 else 35]
                + 0.2 * lm[40 if side < 0 else 47]
            )
            sh.blob(cheek, (0.2, 0.13), 0.0, 0.16 * k12, dark=False)
    k = levels.get(9, 0.0)
    if k > 0:  # wrinkles across the nose bridge ("bunny lines") and along its sides
        for j, t in enumerate((0.3, 0.5, 0.7)):
            c = (1 - t) * lm[27] + t * lm[29]
            half = 0.08 + 0.02 * j
            a = c - half * u * ex - 0.02 * u * up
            b = c + half * u * ex - 0.02 * u * up
            sh.stroke(arc(a, b, 0.04), 0.45 * k * (1 - 0.1 * j), 0.035)
            sh.stroke(arc(a, b, 0.04) - 0.04 * u * up, 0.14 * k, 0.03, dark=False)
        for side, eye in ((-1, 39), (1, 42)):
            for off in (0.0, 0.06):
                a = p(lm[eye], -0.04 + off, -0.08 - off, side)
                b = p(lm[eye], 0.0 + off, -0.32 - off, side)
                sh.stroke(np.array([a, b]), 0.4 * k, 0.035)
        sh.blob(0.5 * (lm[27] + lm[30]), (0.12, 0.2), roll, 0.1 * k, dark=True)
        sh.stroke(lm[[31, 32, 33, 34, 35]] + 0.02 * u * up, 0.3 * k, 0.05)  # flared nostrils
    k = levels.get(15, 0.0)
    if k > 0:  # marionette shadows below the corners, chin boss and the furrow above it
        for side, corner in ((-1, 48), (1, 54)):
            a = p(lm[corner], 0.01, -0.02, side)
            b = p(lm[corner], 0.06, -0.26, side)
            sh.stroke(np.array([a, b]), 0.6 * k, 0.045)
            sh.stroke(np.array([a, b]), 0.25 * k, 0.1, fine=False)
        chin = 0.5 * (lm[57] + lm[8])
        sh.stroke(arc(p(lm[57], 0.16, -0.06, -1), p(lm[57], 0.16, -0.06, 1), -0.05), 0.5 * k, 0.045)
        sh.blob(chin - 0.03 * u * up, (0.2, 0.12), roll, 0.22 * k, dark=False)
        sh.blob(chin - 0.05 * u * up, (0.06, 0.05), roll, 0.2 * k, dark=True, fine=True)  # dimpling
    k = levels.get(20, 0.0)
    if k > 0:  # tension folds beyond the stretched corners, flattened lips, taut neck
        for side, corner in ((-1, 48), (1, 54)):
            a = p(lm[corner], 0.03, 0.0, side)
            b = p(lm[corner], 0.22, -0.08, side)
            sh.stroke(np.array([a, b]), 0.55 * k, 0.04)
            sh.stroke(np.array([a, b]) + 0.045 * u * up, 0.18 * k, 0.035, dark=False)
            jaw = p(lm[corner], 0.14, -0.3, side)
            sh.stroke(np.array([jaw, jaw + 0.08 * side * u * ex - 0.12 * u * up]), 0.45 * k, 0.04)
    k = levels.get(23, 0.0)
    if k > 0:  # pressed lips: tight dark line, lips rolled in (paler), bulges and wrinkles around
        sh.paint(lm[48:60], 0.9 * k, lip_skin)  # the red of the lips rolls in: skin shows
        sh.stroke(lm[[48, 60, 61, 62, 63, 64, 54]], 0.9 * k, 0.05)
        sh.stroke(lm[[48, 49, 50, 51, 52, 53, 54]] + 0.03 * u * up, 0.3 * k, 0.07, dark=False)
        sh.stroke(lm[[54, 55, 56, 57, 58, 59, 48]] - 0.03 * u * up, 0.3 * k, 0.07, dark=False)
        sh.stroke(lm[[54, 55, 56, 57, 58, 59, 48]] - 0.12 * u * up, 0.35 * k, 0.06)  # chin bulge edge
        for side, corner in ((-1, 48), (1, 54)):
            sh.blob(p(lm[corner], 0.03, 0.0, side), (0.04, 0.06), 0.0, 0.35 * k, dark=True, fine=True)


def _shade_jaw(sh: Shader, lm: np.ndarray, k: float) -> None:
    """AU26: the dropped jaw stretches the cheeks (shadowed hollows beside the mouth)."""
    ex, ey, u = face_frame(lm)
    for side, corner in ((-1, 48), (1, 54)):
        top = lm[corner] + side * 0.12 * u * ex - 0.15 * u * ey
        bot = lm[corner] + side * 0.1 * u * ex + 0.3 * u * ey
        sh.stroke(np.array([top, bot]), 0.35 * k, 0.14, fine=False)
        sh.stroke(np.array([top, bot]), 0.35 * k, 0.04)


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
    _keep_order(src, dst, face_frame(lm0)[1])
    out = warp_image(face.image, src, dst).astype(np.float32)
    lm = dst[:68]
    _, _, u = face_frame(lm)
    sh = Shader(h, w, u, SHADE_GAIN)
    skin, lip_skin = _skin_colors(face.image, lm0)
    _shade(sh, lm, levels, skin, lip_skin)
    if 26 in levels:
        _shade_jaw(sh, lm, levels[26])
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
    from labeling.detection.detectors import yunet_model

    h, w = image.shape[:2]
    det = yunet_model(input_size=(w, h))
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

    from warehouse.packaged_weights import weight_path

    return [("astronaut", data.astronaut()), ("t1", _read_rgb(weight_path("insightface_t1.jpg")))]


def head_yaw(lm: np.ndarray) -> float:
    """Signed head turn from landmarks: how far the nose tip (30) sits off the middle of the face
    outline (jaw points 0 and 16), along the eye line, relative to half the face width. 0 frontal,
    about +-0.4 a three-quarter view, beyond +-0.8 a head turned nearly to profile."""
    lm = np.asarray(lm, np.float64)
    ex, _, _ = face_frame(lm)
    left, right, nose = lm[0] @ ex, lm[16] @ ex, lm[30] @ ex
    return float((nose - 0.5 * (left + right)) / max(0.5 * (right - left), 1e-6))


# AU rendering assumes near-frontal faces: default sources turned further are left out
MAX_SOURCE_YAW = 0.6


def load_source_faces(photos: Sequence[str | Path] | None = None) -> list[SourceFace]:
    """Neutralized source faces: by default the astronaut + the near-frontal faces of
    insightface's t1.jpg (identities "astronaut", "t1_0", "t1_2", "t1_3", "t1_5": t1.jpg's faces
    are numbered left to right); else every face found in `photos` (identities "<file stem>" or
    "<file stem>_<i>"). The mouth patch comes from the face with the largest inner-lip opening
    (falls back to t1.jpg's laughing face, or None).

    AU rendering assumes near-frontal faces: the landmark moves are symmetric in the face plane,
    and on a turned head the far half is foreshortened and dlib's points on it are unreliable,
    so the AUs barely show there. Default faces whose `head_yaw` exceeds MAX_SOURCE_YAW (t1_1 and
    t1_4, both in near-profile) are therefore not loaded. The laughing t1_3 is kept: its smile
    cannot be fully neutralized, which its `base_aus` (AU6/12/25) report, and labels add."""
    named = _default_photos() if photos is None else [(Path(p).stem, _read_rgb(p)) for p in photos]
    raw: list[tuple[str, np.ndarray, np.ndarray]] = []
    for stem, img in named:
        faces = _faces_in(img, best_only=stem == "astronaut")  # its suit badge fools dlib
        for i, (crop, lm) in enumerate(faces):
            raw.append((stem if len(faces) == 1 else f"{stem}_{i}", crop, lm))
    patch = _best_mouth_patch(raw)
    if patch is None and photos is not None:
        patch = _best_mouth_patch([(s, c, lm) for s, img in _default_photos() for c, lm in _faces_in(img)])
    if photos is None:
        raw = [r for r in raw if abs(head_yaw(r[2])) <= MAX_SOURCE_YAW]
    out = []
    for identity, crop, lm in raw:
        neutral, nlm, base = _neutralize(crop, lm)
        neutral = _soften_surroundings(neutral, nlm)
        out.append(SourceFace(identity, neutral, nlm, base, patch))
    return out


def _soften_surroundings(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Blur what lies outside the face (hair, background, neighbours), feathered."""
    lm = np.asarray(lm, np.float64)
    hull = np.concatenate([lm[:17], virtual_points(lm)[[10, 0, 2, 4, 3, 1, 11]]])
    mask = np.zeros(image.shape[:2], np.float32)
    cv2.fillConvexPoly(mask, np.round(cv2.convexHull(hull.astype(np.float32))[:, 0]).astype(np.int32), 1.0)
    u = face_frame(lm)[2]
    mask = cv2.GaussianBlur(mask, (0, 0), 0.08 * u)[..., None]
    soft = cv2.GaussianBlur(image, (0, 0), 0.12 * u).astype(np.float32)
    return np.clip(image * mask + soft * (1 - mask) + 0.5, 0, 255).astype(np.uint8)


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
