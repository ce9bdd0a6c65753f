"""Face tracks across video frames: ultralytics' ByteTrack, fed with our detections.

    tracker = FaceTracker(buffer=30)
    ids = tracker.update(frame, faces)     # per detection its track id, or None

ByteTrack (ultralytics.trackers.byte_tracker.BYTETracker) associates boxes frame to frame by
IoU with a Kalman motion model, in two stages (confident boxes first, then the weak ones), and
keeps a lost track `buffer` frames before dropping it. We give it boxes, not an ultralytics
model's results: any Detector works.

Ultralytics' matching module imports `lap` (a LAPJV solver), which ultralytics does not declare
and would pip-install at run time when missing: it is pinned in pyproject.toml.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from labeling.detection.detectors import Detection


class FaceTracker:
    """ByteTrack over one input's frames: per frame, the track id of each face detection (None where
    the tracker took none: a weak box that matched no track). Ids start after `first_id`, so the
    trackers of successive inputs of a run never reuse one; `last_id` is the highest given."""

    def __init__(self, buffer: int = 30, match: float = 0.8, first_id: int = 0):
        if "ultralytics" not in sys.modules:  # offline, settings in our folder (labeling.detection.yolo_env)
            from labeling.detection.yolo_env import prepare_ultralytics_offline

            prepare_ultralytics_offline()
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
