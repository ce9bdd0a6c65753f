"""Open mouths: a real mouth interior (teeth, tongue, dark cavity) cut from a photo, rectified to
a rectangle between the inner-lip lines, and placed back between the *warped* inner-lip
landmarks (60-67) of a render. Upper teeth stay under the upper lip, lower teeth above the lower
lip, and only the middle (the cavity) stretches when the jaw drops."""

from __future__ import annotations

import cv2
import numpy as np

UPPER = [60, 61, 62, 63, 64]
LOWER = [60, 67, 66, 65, 64]
INNER = [60, 61, 62, 63, 64, 65, 66, 67]
# an opening up to OPEN x the patch's own shows the patch squeezed; wider ones keep the upper
# teeth under the upper lip, show the same teeth mirrored (darker) above the lower lip as lower
# teeth, and the patch's darkest row, in shadow, as the cavity between them
OPEN = 1.3
LOWER_TEETH = 0.45  # height of the lower-teeth band relative to the upper teeth


def _increasing(xs: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(xs + np.arange(len(xs)) * 1e-3)


def lip_lines(lm: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y of the upper and lower inner-lip lines at the columns x."""
    up, lo = lm[UPPER], lm[LOWER]
    return (
        np.interp(x, _increasing(up[:, 0]), up[:, 1]),
        np.interp(x, _increasing(lo[:, 0]), lo[:, 1]),
    )


def inner_gap(lm: np.ndarray) -> float:
    """Mean vertical opening between the inner lips, in pixels."""
    return float(np.mean(lm[[67, 66, 65], 1] - lm[[61, 62, 63], 1]))


def extract_patch(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The mouth interior of an open mouth, rectified: column = position between the inner
    corners (60 -> 64), row = position between the upper and lower inner lip."""
    lm = np.asarray(lm, np.float64)
    width = max(8, int(round(lm[64, 0] - lm[60, 0])))
    height = max(4, int(round(inner_gap(lm))))
    u = np.linspace(0.0, 1.0, width)
    x = lm[60, 0] + u * (lm[64, 0] - lm[60, 0])
    yu, yl = lip_lines(lm, x)
    # sample a little inside the lips so no lip red bleeds into the patch
    t = 0.08 + 0.84 * (np.arange(height) + 0.5) / height
    map_x = np.repeat(x[None, :], height, 0).astype(np.float32)
    map_y = (yu[None, :] + t[:, None] * (yl - yu)[None, :]).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _profile(u: np.ndarray) -> np.ndarray:
    """How open a typical mouth is across its width (1 in the middle, small at the corners)."""
    return np.sqrt(np.clip(1.0 - (2.0 * u - 1.0) ** 2, 0.06, 1.0))


def _interior(
    patch: np.ndarray,
    u: np.ndarray,
    t: np.ndarray,
    gap: np.ndarray,
    mouth_w: float,
    rows: int,
    tissue: np.ndarray,
) -> np.ndarray:
    ph, pw = patch.shape[:2]
    src = patch.astype(np.float32)
    teeth_h = (mouth_w / pw) * ph * _profile(u)  # the patch's opening at its scale, per column
    open_ = gap / np.maximum(teeth_h, 0.5)
    col = np.repeat((u * (pw - 1))[None, :], rows, 0).astype(np.float32)
    d = t * gap[None, :]  # distance below the upper lip, pixels
    upper = np.minimum(teeth_h, gap)[None, :]
    lower = np.clip(gap - teeth_h, 0, LOWER_TEETH * teeth_h)[None, :]
    mid = np.maximum(gap[None, :] - upper - lower, 1e-3)
    squeezed = (open_ <= OPEN)[None, :]
    v = np.where(
        squeezed,
        t,
        np.where(
            d < upper,
            d / np.maximum(upper, 1e-3),
            np.where(
                d > gap[None, :] - lower, (gap[None, :] - d) / np.maximum(lower, 1e-3) * LOWER_TEETH, 1.0
            ),
        ),
    )
    sampled = cv2.remap(
        src, col, (v * (ph - 1)).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # the cavity: real lip/mouth tissue (sampled by the caller) in deep shadow, lighter towards
    # the tongue at the bottom
    depth = np.clip((d - upper) / mid, 0, 1)
    cavity = tissue * (0.18 + 0.3 * depth**1.5)[..., None]
    in_cavity = (~squeezed) & (d >= upper) & (d <= gap[None, :] - lower)
    in_lower = (~squeezed) & (d > gap[None, :] - lower)
    out = np.where(in_cavity[..., None], cavity, sampled)
    return np.where(in_lower[..., None], out * 0.62, out).astype(np.float32)


def fill_mouth(image: np.ndarray, lm: np.ndarray, patch: np.ndarray | None, amount: float) -> None:
    """Paint the opening between the inner lips of `lm` (float32 RGB image, in place)."""
    if amount <= 0:
        return
    lm = np.asarray(lm, np.float64)
    h, w = image.shape[:2]
    inner = lm[INNER]
    x0 = int(max(0, np.floor(inner[:, 0].min()) - 1))
    x1 = int(min(w, np.ceil(inner[:, 0].max()) + 2))
    y0 = int(max(0, np.floor(inner[:, 1].min()) - 1))
    y1 = int(min(h, np.ceil(inner[:, 1].max()) + 2))
    if x1 - x0 < 3 or y1 - y0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    pts = np.round((inner - [x0, y0]) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.6)
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)
    yu, yl = lip_lines(lm, xs)
    gap = np.maximum(yl - yu, 0.5)
    mouth_w = max(lm[64, 0] - lm[60, 0], 4.0)
    u = np.clip((xs - lm[60, 0]) / mouth_w, 0.0, 1.0)
    d_top = ys[:, None] - yu[None, :]
    t = np.clip(d_top / gap[None, :], 0.0, 1.0)
    region = image[y0:y1, x0:x1]
    if patch is None:
        # no real mouth available: a dark cavity (documented fallback)
        interior = np.full_like(region, 0.0) + np.array([70.0, 30.0, 35.0], np.float32)
    else:
        # tissue texture: the lower lip just below the opening, reflected upwards
        lip = max(2.0, 0.6 * (lm[57, 1] - lm[66, 1]))
        ty = yl[None, :] + 1.0 + np.mod(np.maximum(yl[None, :] - ys[:, None], 0), lip)
        tx = np.repeat(xs[None, :], len(ys), 0)
        tissue = cv2.remap(
            image,
            tx.astype(np.float32),
            ty.astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT101,
        )
        tissue = cv2.GaussianBlur(tissue, (0, 0), 1.0)
        interior = _interior(patch, u, t, gap, mouth_w, len(ys), tissue)
    # depth: darker towards the corners and just under the upper lip
    shade = (0.55 + 0.45 * _profile(u))[None, :] * (1.0 - 0.3 * np.exp(-np.maximum(d_top, 0) / 1.5))
    interior = interior * shade[..., None].astype(np.float32)
    alpha = (mask * float(min(1.0, amount)))[..., None]
    region[:] = region * (1 - alpha) + interior * alpha
