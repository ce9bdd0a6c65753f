"""Thin-plate-spline image warps driven by control-point moves.

The warp is *backward*: a TPS is fitted on the destination positions of the control points
and gives, for every output pixel, where to sample the input. It is evaluated on a coarse grid
(every `step` pixels) whose sample positions match `cv2.resize`'s bilinear convention, so the
upsampled field is an exact bilinear interpolation of the TPS; `cv2.remap` does the rest.
"""

from __future__ import annotations

import cv2
import numpy as np


def border_points(width: int, height: int, per_side: int = 5) -> np.ndarray:
    """Points along the image border (corners included), pinned so the frame never moves."""
    xs = np.linspace(0, width - 1, per_side)
    ys = np.linspace(0, height - 1, per_side)
    pts = [(x, 0.0) for x in xs] + [(x, height - 1.0) for x in xs]
    pts += [(0.0, y) for y in ys[1:-1]] + [(width - 1.0, y) for y in ys[1:-1]]
    return np.asarray(pts, np.float64)


def _tps_u(r2: np.ndarray) -> np.ndarray:
    # U(r) = r^2 log r = 0.5 r^2 log r^2, with U(0) = 0
    return 0.5 * r2 * np.log(np.maximum(r2, 1e-20))


def tps_fit(centers: np.ndarray, values: np.ndarray, regularization: float = 1e-5) -> np.ndarray:
    """Coefficients (n + 3, d) of the TPS through `values` (n, d) at `centers` (n, 2)."""
    n = len(centers)
    d2 = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = _tps_u(d2) + regularization * np.eye(n)
    a[:n, n] = 1.0
    a[:n, n + 1 :] = centers
    a[n, :n] = 1.0
    a[n + 1 :, :n] = centers.T
    rhs = np.zeros((n + 3, values.shape[1]))
    rhs[:n] = values
    return np.linalg.lstsq(a, rhs, rcond=None)[0] if n < 3 else np.linalg.solve(a, rhs)


def tps_eval(centers: np.ndarray, coef: np.ndarray, points: np.ndarray) -> np.ndarray:
    n = len(centers)
    d2 = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return _tps_u(d2) @ coef[:n] + coef[n] + points @ coef[n + 1 :]


def displacement_field(
    src: np.ndarray, dst: np.ndarray, width: int, height: int, step: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Backward maps (map_x, map_y) float32 (height, width): output pixel -> input position,
    such that the control point at src[i] lands on dst[i]."""
    scale = float(max(width, height))
    centers = dst / scale  # normalized coordinates keep the system well conditioned
    coef = tps_fit(centers, (src - dst) / scale)
    gw, gh = max(2, int(np.ceil(width / step))), max(2, int(np.ceil(height / step)))
    # grid sample i sits where cv2.resize's bilinear rule puts source index i
    gx = (np.arange(gw) + 0.5) * width / gw - 0.5
    gy = (np.arange(gh) + 0.5) * height / gh - 0.5
    grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    disp = (tps_eval(centers, coef, grid / scale) * scale).reshape(gh, gw, 2).astype(np.float32)
    disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
    xx, yy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xx + disp[..., 0], yy + disp[..., 1]


def warp_image(image: np.ndarray, src: np.ndarray, dst: np.ndarray, step: int = 8) -> np.ndarray:
    """Warp `image` so that the control points `src` move to `dst` (both (n, 2), x/y)."""
    h, w = image.shape[:2]
    map_x, map_y = displacement_field(np.asarray(src, np.float64), np.asarray(dst, np.float64), w, h, step)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
