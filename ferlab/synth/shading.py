"""Multiplicative shading: furrows, wrinkles, highlights and shadows drawn as strokes/blobs on
float canvases aligned to landmarks, blurred, and multiplied into the image (skin texture stays).
A few things are painted (blended towards a colour) before the shading: the whites of widened
eyes, rolled-in lips."""

from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


class Shader:
    """Accumulates darkening/lightening at three softness levels, then applies them at once."""

    def __init__(self, height: int, width: int, unit: float, strength: float = 1.0) -> None:
        self.shape = (height, width)
        self.unit = unit  # face scale in pixels (inter-ocular distance)
        self.strength = strength  # multiplies every stroke/blob/polygon amount (not paints)
        self.fine_dark = np.zeros(self.shape, np.float32)
        self.soft_dark = np.zeros(self.shape, np.float32)
        self.soft_light = np.zeros(self.shape, np.float32)
        self.fine_light = np.zeros(self.shape, np.float32)
        self.paints: list[tuple[np.ndarray, np.ndarray]] = []  # (alpha layer, RGB colour)
        self.used = False

    def _canvas(self, dark: bool, fine: bool) -> np.ndarray:
        if dark:
            return self.fine_dark if fine else self.soft_dark
        return self.fine_light if fine else self.soft_light

    def stroke(
        self, points: np.ndarray, amount: float, width: float, *, dark: bool = True, fine: bool = True
    ) -> None:
        """A polyline (a furrow when dark, a ridge highlight when light); width in face units."""
        if amount <= 0:
            return
        thickness = max(1, int(round(width * self.unit)))
        canvas = self._canvas(dark, fine)
        layer = np.zeros(self.shape, np.float32)
        cv2.polylines(layer, [_fixed(points)], False, 1.0, thickness, cv2.LINE_AA, _SHIFT)
        np.maximum(canvas, layer * amount * self.strength, out=canvas)
        self.used = True

    def blob(
        self,
        center: np.ndarray,
        axes: tuple[float, float],
        angle: float,
        amount: float,
        *,
        dark: bool,
        fine: bool = False,
    ) -> None:
        """A filled ellipse (axes in face units, angle in degrees) of darkening/lightening."""
        if amount <= 0:
            return
        canvas = self._canvas(dark, fine)
        layer = np.zeros(self.shape, np.float32)
        ax = (max(1, int(axes[0] * self.unit * _ONE)), max(1, int(axes[1] * self.unit * _ONE)))
        c = tuple(int(v) for v in np.round(np.asarray(center) * _ONE))
        cv2.ellipse(layer, c, ax, angle, 0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
        np.maximum(canvas, layer * amount * self.strength, out=canvas)
        self.used = True

    def paint(self, points: np.ndarray, amount: float, color: np.ndarray) -> None:
        """A filled polygon blended towards `color` (RGB 0..255) by `amount` (0..1), soft-edged;
        painted before the shading, in call order."""
        if amount <= 0:
            return
        layer = np.zeros(self.shape, np.float32)
        cv2.fillPoly(layer, [_fixed(points)], 1.0, cv2.LINE_AA, _SHIFT)
        layer = cv2.GaussianBlur(layer, (0, 0), max(0.6, 0.02 * self.unit))
        self.paints.append((layer * float(min(1.0, amount)), np.asarray(color, np.float32)))
        self.used = True

    def gain(self) -> np.ndarray:
        u = self.unit
        fine = max(0.7, 0.03 * u)
        soft = max(1.5, 0.09 * u)
        g = np.ones(self.shape, np.float32)
        if self.fine_dark.any():
            g *= 1.0 - np.clip(0.85 * cv2.GaussianBlur(self.fine_dark, (0, 0), fine), 0, 0.9)
        if self.fine_light.any():
            g *= 1.0 + cv2.GaussianBlur(self.fine_light, (0, 0), fine)
        if self.soft_dark.any():
            g *= 1.0 - np.clip(cv2.GaussianBlur(self.soft_dark, (0, 0), soft), 0, 0.9)
        if self.soft_light.any():
            g *= 1.0 + cv2.GaussianBlur(self.soft_light, (0, 0), soft)
        return g

    def apply(self, image: np.ndarray) -> np.ndarray:
        """image float32 (h, w, 3) in 0..255 -> shaded float32."""
        if not self.used:
            return image
        out = image
        for alpha, color in self.paints:  # painted first: furrows and shadows fall on them
            a = alpha[..., None]
            out = out * (1.0 - a) + color * a
        return out * self.gain()[..., None]
