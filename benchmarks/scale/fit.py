"""Growth fits: the exponent b of t = c * n^b (least squares of log t on log n), the local
exponent between the two largest sizes, and projections to a size never run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PowerFit:
    exponent: float  # b
    coef: float  # c
    r2: float

    def at(self, n: float) -> float:
        return self.coef * n**self.exponent


def fit_power(sizes: Sequence[float], values: Sequence[float]) -> PowerFit | None:
    """Least-squares line through (log n, log v); None with fewer than 2 distinct positive sizes."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if n > 0 and v > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerFit(exponent=b, coef=math.exp(a), r2=r2)


def local_exponent(sizes: Sequence[float], values: Sequence[float]) -> float | None:
    """The slope of log v on log n between the two largest sizes: where the growth is heading."""
    pts = sorted((n, v) for n, v in zip(sizes, values) if n > 0 and v > 0)
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return None
    (n1, v1), (n2, v2) = pts[-2], pts[-1]
    return math.log(v2 / v1) / math.log(n2 / n1)


def fit_linear(sizes: Sequence[float], values: Sequence[float]) -> tuple[float, float] | None:
    """(intercept, slope) of v = a + k n by least squares; None with < 2 distinct sizes."""
    pts = list(zip(sizes, values))
    if len({n for n, _ in pts}) < 2:
        return None
    mx = sum(n for n, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    k = sum((n - mx) * (v - my) for n, v in pts) / sum((n - mx) ** 2 for n, _ in pts)
    return my - k * mx, k


def project_memory(sizes: Sequence[float], peaks: Sequence[float], n: float) -> float | None:
    """Peak memory at n: a fixed base + a cost per item (the linear fit, the usual shape of a
    peak), or the power fit where that grows faster than linearly (exponent > 1, a peak that
    grows with the square of something); never below the largest peak measured. (A power fit
    with exponent < 1 is not used: a large fixed base makes it meaningless far out.)"""
    guesses = [max(peaks)] if peaks else []
    lin = fit_linear(sizes, peaks)
    if lin is not None:
        guesses.append(lin[0] + max(lin[1], 0.0) * n)
    power = fit_power(sizes, peaks)
    if power is not None and power.exponent > 1:
        guesses.append(power.at(n))
    return max(guesses) if guesses else None


def marginal_rate(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Items per second between the two largest sizes (the process start and fixed costs
    cancel): the steady-state throughput."""
    pts = sorted(zip(sizes, seconds))
    if len(pts) < 2:
        return None
    (n1, t1), (n2, t2) = pts[-2], pts[-1]
    if n2 <= n1 or t2 <= t1:
        return None
    return (n2 - n1) / (t2 - t1)
