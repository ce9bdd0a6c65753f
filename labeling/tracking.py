"""Face tracks across video frames: ultralytics' ByteTrack, fed with our detections.

    tracker = FaceTracker(buffer=30)
    ids = tracker.update(frame, faces)     # per detection its track id, or None

ByteTrack (ultralytics.trackers.byte_tracker.BYTETracker) associates boxes frame to frame by
IoU with a Kalman motion model, in two stages (confident boxes first, then the weak ones), and
keeps a lost track `buffer` frames before dropping it. We give it boxes, not an ultralytics
model's results: any Detector works.

Ultralytics' matching module imports `lap` (a LAPJV solver) at import and would try to pip-install
it when missing; ultralytics does not declare it. Where `lap` is not installed, `lap.lapjv` is
provided here by SciPy's linear_sum_assignment on the same extended cost matrix lapjv builds for
`cost_limit` (each row and column may stay unmatched at half the limit), so the assignments are
the same (up to ties).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from labeling.detectors import Detection


def lapjv(cost: np.ndarray, extend_cost: bool = True, cost_limit: float = np.inf, **_: object):
    """`lap.lapjv`'s result (total cost, x: column of each row or -1, y: row of each column or -1)
    from SciPy: rows and columns may stay unmatched at cost_limit / 2 each."""
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    x, y = np.full(n, -1, np.int64), np.full(m, -1, np.int64)
    if n == 0 or m == 0:
        return 0.0, x, y
    if np.isfinite(cost_limit):  # lap's own extension: (n + m) square, cost_limit / 2 outside C, 0 corner
        ext = np.full((n + m, n + m), cost_limit / 2.0)
        ext[n:, m:] = 0.0
        ext[:n, :m] = np.where(np.isfinite(cost), cost, 1e12)
        rows, cols = linear_sum_assignment(ext)
        keep = (rows < n) & (cols < m)
    else:
        rows, cols = linear_sum_assignment(cost)
        keep = np.ones(len(rows), bool)
    rows, cols = rows[keep], cols[keep]
    x[rows], y[cols] = cols, rows
    return float(cost[rows, cols].sum()), x, y


def ensure_lap() -> None:
    """Make `import lap` work for ultralytics' trackers: the real package when installed, else this
    module's SciPy `lapjv`."""
    try:
        import lap  # noqa: F401

        return
    except ImportError:
        pass
    shim = types.ModuleType("lap")
    shim.__version__ = "0.5.12+scipy"  # ultralytics asserts a version
    shim.lapjv = lapjv
    sys.modules["lap"] = shim


class FaceTracker:
    """ByteTrack over one input's frames: per frame, the track id of each face detection (None where
    the tracker took none: a weak box that matched no track). Ids start after `first_id`, so the
    trackers of successive inputs of a run never reuse one; `last_id` is the highest given."""

    def __init__(self, buffer: int = 30, match: float = 0.8, first_id: int = 0):
        if "ultralytics" not in sys.modules:  # offline, settings in our folder (labeling.yolo_env)
            from labeling.yolo_env import prepare_ultralytics_offline

            prepare_ultralytics_offline()
        ensure_lap()
        from ultralytics.trackers.byte_tracker import BYTETracker

        # ultralytics' bytetrack.yaml, with the buffer and the match threshold ours to set
        args = SimpleNamespace(
            track_high_thresh=0.25,
            track_low_thresh=0.1,
            new_track_thresh=0.25,
            track_buffer=buffer,
            match_thresh=match,
            fuse_score=True,
        )
        self._tracker = BYTETracker(args)
        self.first_id = first_id
        self.last_id = first_id

    def update(self, image: np.ndarray, faces: Sequence[Detection]) -> list[int | None]:
        from ultralytics.engine.results import Boxes

        data = np.array([[d.x1, d.y1, d.x2, d.y2, d.score, 0.0] for d in faces], np.float32).reshape(-1, 6)
        self._tracker.update(Boxes(data, image.shape[:2]).numpy(), image)
        ids: list[int | None] = [None] * len(faces)
        frame = self._tracker.frame_id
        # Every track this frame updated or started (a face first seen here gets its id at once;
        # ByteTrack itself reports a new track from its second frame on).
        for track in self._tracker.tracked_stracks:
            idx = getattr(track, "idx", None)
            if track.frame_id == frame and idx is not None and 0 <= int(idx) < len(faces):
                tid = self.first_id + int(track.track_id)
                ids[int(idx)] = tid
                self.last_id = max(self.last_id, tid)
        return ids
