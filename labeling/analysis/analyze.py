"""Facial expression analysis of a video, an image, a folder or a camera: one row per face per frame.

    result = analyze(wh, "clip.mp4", AnalyzeSettings(average=5, min_probability=0.6), video_out="boxes.mp4")
    save_analysis(result, "clip.parquet")       # or .csv; settings beside it: clip.parquet.settings.json
    print(result.summary())

decode (a background thread, labeling.detection.prefetch) -> detect faces in batches of frames with the
production detector (this data root's YOLO student, else YuNet; a worker thread, one batch ahead
of the rest) -> track them (ultralytics' ByteTrack, fed with our detections) -> crop and align them
as auto-labeling does (labeling.detection.crops) -> the AU and emotion models (the production ones, or the
ids given) on all the faces of a batch at once, ONNX Runtime (CUDA when present) -> rows.
`benchmarks/analyze_video.py` times it.

Columns, in this order (scripts may rely on them):

- `frame`: the frame number (from 1; a video's own numbering, stride or not; with several inputs,
  each input's frames follow the previous input's, see `AnalysisResult.sources`)
- `timestamp`: seconds from the start of its input (0 for an image; a camera: since the start)
- `x1`, `y1`, `x2`, `y2`: the face box in the frame's pixels; `score`: the detector's
- `track_id`: a face keeps its id across frames while it stays in view (and up to `track_buffer`
  frames out of it); ids are unique in a run; null for a face the tracker did not take
- `au1` ... : per AU of the AU model, its probability; `au1_present` ...: probability >= the AU's
  threshold (the mean of the thresholds chosen on each fold's validation people; 0.5 without)
- one column per emotion of the emotion model (`angry` ... `neutral`): its probability
- `emotion`: the most probable emotion, or "uncertain" when its probability is below
  `min_probability` (seed 004)
- `emotion_from_aus`: the emotion the present AUs imply (Ekman's patterns, labeling.analysis.ekman):
  "neutral" when no AU is present, null when present AUs match no pattern

With `average` N > 1 every probability is the mean over the face's track's last N frames (this one
included), and the presence, `emotion` and `emotion_from_aus` follow the averaged values (seed 004:
steadier labels on video). A video frame the decoder cannot decode is skipped and counted
(`corrupt_frames`); an unreadable file (a broken image, a video with no frame to decode) is a
Reject, and only that; neither stops the run.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pyarrow as pa

from labeling.analysis.ekman import emotion_from_aus
from labeling.analysis.settings import AnalyzeSettings
from labeling.analysis.tracking import FaceTracker
from labeling.detection.crops import FaceCrop, crop_faces
from labeling.detection.detectors import Detection, Detector, as_bgr
from labeling.detection.media import IMAGE_EXTS, VIDEO_EXTS, iter_frames, media_files
from labeling.detection.prefetch import prefetch
from labeling.student.face_detector import resolve_detector as resolve_student_or
from warehouse.atomic import atomic_path, atomic_write_bytes
from warehouse.errors import InputError
from warehouse.rejects import Reject
from warehouse.schemas import FACS_NAMES
from warehouse.sources.common import progress
from warehouse.store import Warehouse
from warehouse.video import decode_frames_skipping, open_video

if TYPE_CHECKING:
    from models.predict import Predictor

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
SOURCE = "analyze"
DEFAULT_FPS = 25.0  # the annotated video's rate when the input has none (images, some cameras)


# ---- inputs -----------------------------------------------------------------------------------
def is_camera(source: str | Path) -> bool:
    """A camera index ("0", "1", ...) that is not also the name of a file or folder."""
    return isinstance(source, str | int) and str(source).isdigit() and not Path(str(source)).exists()


@dataclass(slots=True)
class _Frame:
    frame: int  # the run's frame number
    timestamp: float
    source: int  # index into the run's sources
    image: np.ndarray


@dataclass(slots=True)
class _Skipped:
    source: int
    frames: list[int]  # the run's frame numbers skipped


@dataclass
class SourceInfo:
    """One input of a run: its frames are `first_frame` .. `first_frame + frames - 1`."""

    source: str
    kind: str  # video | image | camera
    first_frame: int
    frames: int = 0  # its extent in frame numbers (a video's declared or decoded count)
    fps: float = 0.0
    corrupt_frames: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k) for k in ("source", "kind", "first_frame", "frames", "fps", "corrupt_frames")
        }


def _open_camera(index: int) -> cv2.VideoCapture:
    """The camera, opened without OpenCV's own warnings on stderr (a missing one is our one error line)."""
    if not (hasattr(cv2, "getLogLevel") and hasattr(cv2, "setLogLevel")):
        return cv2.VideoCapture(index)
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)  # silent
    try:
        return cv2.VideoCapture(index)
    finally:
        cv2.setLogLevel(level)


def _camera_frames(index: int, info: SourceInfo, sid: int, offset: int, stride: int) -> Iterator[_Frame]:
    cap = _open_camera(index)
    try:
        if not cap.isOpened():
            raise InputError(
                f"camera {index}: OpenCV cannot open it; check the index (0 is the first camera)"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        info.fps = fps if np.isfinite(fps) and 0 < fps < 1000 else 0.0
        start = time.monotonic()
        n = 0
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                return
            n += 1
            info.frames = n
            if (n - 1) % stride == 0:
                yield _Frame(offset + n, time.monotonic() - start, sid, image)
    finally:
        cap.release()


def _video_frames(path: Path, info: SourceInfo, sid: int, offset: int, stride: int) -> Iterator[Any]:
    uri = str(path.resolve())
    try:
        size = path.stat().st_size
    except OSError as exc:
        yield Reject(SOURCE, uri, "decode", "unreadable_file", str(exc))
        return
    cap = open_video(path)
    try:
        if size == 0 or not cap.isOpened():
            yield Reject(SOURCE, uri, "decode", "unreadable_video", f"OpenCV cannot open it ({size} bytes)")
            return
        skips, frames = decode_frames_skipping(cap, stride)
        info.fps = skips.fps
        reported = 0
        for n, seconds, image in frames:
            if len(skips.corrupt) > reported:
                yield _Skipped(sid, [offset + k for k in skips.corrupt[reported:]])
                reported = len(skips.corrupt)
            info.frames = max(info.frames, n)
            yield _Frame(offset + n, seconds, sid, image)
        info.frames = max(info.frames, skips.last, skips.header_frames)
        if skips.decoded == 0:  # an unreadable file: a reject, its frames not also counted corrupt
            yield Reject(SOURCE, uri, "decode", "unreadable_video", f"no frame decoded ({size} bytes)")
        elif len(skips.corrupt) > reported:
            yield _Skipped(sid, [offset + k for k in skips.corrupt[reported:]])
    finally:
        cap.release()


def _input_frames(sources: Sequence[str | Path], stride: int, infos: list[SourceInfo]) -> Iterator[Any]:
    """Frames of every input in order (_Frame, _Skipped, Reject); `infos` filled as
    they are read (each input's first frame number follows the previous input's extent)."""
    offset = 0
    for source in sources:
        if is_camera(source):
            info = SourceInfo(f"camera:{int(source)}", "camera", offset + 1)
            infos.append(info)
            yield from _camera_frames(int(source), info, len(infos) - 1, offset, stride)
            offset += info.frames
            continue
        for path in media_files([source]):
            ext = path.suffix.lower()
            kind = "video" if ext in VIDEO_EXTS else "image"
            info = SourceInfo(str(path), kind, offset + 1)
            infos.append(info)
            sid = len(infos) - 1
            if kind == "video":
                yield from _video_frames(path, info, sid, offset, stride)
            else:
                info.frames = 1
                for item in iter_frames([path]):  # images (and unknown extensions) as detection reads them
                    if isinstance(item, Reject):
                        yield item  # a broken file: a reject, not also a corrupt frame
                    else:
                        yield _Frame(offset + (item.frame_index or 1), 0.0, sid, item.image)
                        info.frames = max(info.frames, item.frame_index or 1)
            offset += info.frames


def input_files(sources: Sequence[str | Path]) -> list[Path]:
    """The files a run reads: those given and those of the folders given (cameras left out)."""
    return media_files([s for s in sources if not is_camera(s)])


def check_not_an_input(out: str | Path, sources: Sequence[str | Path], name: str) -> None:
    """Raise InputError when the output `out` is one of the files `sources` read (the same path, a
    link to it or a hard link): writing it would replace what is analyzed."""
    for path in input_files(sources):
        try:
            same = os.path.samefile(out, path)
        except OSError:  # either does not exist
            same = False
        if same:
            raise InputError(
                f"{name} {out} is the input {path}: writing it would replace that input; choose another file"
            )


def check_sources(sources: Sequence[str | Path]) -> None:
    """Raise InputError when nothing given is a camera index, an image, a video or a folder with some."""
    if not sources:
        raise InputError("nothing to analyze: give a video, an image, a folder or a camera index")
    for source in sources:
        if is_camera(source):
            continue
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder (a camera is a number: 0, 1, ...)")
        if path.is_dir() and not media_files([path]):
            raise InputError(
                f"{path}: no image or video in it: looked for {' '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))}"
            )


def expected_frames(sources: Sequence[str | Path], stride: int = 1) -> int | None:
    """How many frames the run will analyze, as the containers declare them (for the progress bar);
    None with a camera."""
    total = 0
    for source in sources:
        if is_camera(source):
            return None
        for path in media_files([source]):
            if path.suffix.lower() not in VIDEO_EXTS:
                total += 1
                continue
            cap = open_video(path)
            try:
                declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0) if cap.isOpened() else 0
            finally:
                cap.release()
            total += -(-declared // stride)
    return total


# ---- models -----------------------------------------------------------------------------------
def resolve_detector(home: Path, spec: str) -> str:
    """The analysis's detector spec: "auto" is this data root's trained YOLO student when there is
    one, else YuNet (the face teacher: the persons the full teachers add are of no use here)."""
    return resolve_student_or(home, spec, fallback="yunet")


def au_number(label: str) -> str:
    """An AU model's label ("AU12") -> its column stem ("au12")."""
    m = re.fullmatch(r"(?i)au\s*(\d+)", label.strip())
    return f"au{int(m.group(1))}" if m else re.sub(r"\W+", "_", label.strip().lower())


def au_thresholds(wh: Warehouse, model_id: str, k: int) -> np.ndarray:
    """Per AU, the mean of the thresholds each fold chose on its validation people (0.5 without)."""
    from models.pipeline import load_run

    folds = [f.thresholds for f in load_run(wh, model_id).folds if f.thresholds is not None]
    if not folds:
        return np.full(k, 0.5, np.float32)
    t = np.nanmean(np.stack([np.asarray(x, np.float64) for x in folds]), axis=0)
    return np.where(np.isfinite(t), t, 0.5).astype(np.float32)


# ---- the run ----------------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    table: pa.Table
    frames: int  # frames analyzed
    frames_with_faces: int
    corrupt_frames: int  # frames skipped because they could not be decoded
    sources: list[SourceInfo]
    rejects: list[Reject]
    detector: str
    au_model: str
    emotion_model: str
    seconds: float
    settings: AnalyzeSettings
    video: Path | None = None
    corrupt: list[int] = field(default_factory=list)  # their frame numbers

    @property
    def faces(self) -> int:
        return self.table.num_rows

    @property
    def tracks(self) -> int:
        ids = self.table.column("track_id").drop_null()
        return len(set(ids.to_pylist()))

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line; each problem counted once: a video frame that cannot be decoded is a corrupt
        frame, an unreadable file (image or video) or a box outside its frame a reject."""
        files = sum(r.stage == "decode" for r in self.rejects)
        return (
            f"{self.frames} frames ({self.frames_with_faces} with a face), {self.faces} faces in "
            f"{self.tracks} tracks, {self.corrupt_frames} corrupt video frames skipped, {len(self.rejects)} "
            f"rejects ({files} unreadable files, {len(self.rejects) - files} boxes outside the frame); "
            f"{self.frames_per_second:.1f} frames/s; detector {self.detector}, "
            f"AU model {self.au_model}, emotion model {self.emotion_model}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frames_with_faces": self.frames_with_faces,
            "faces": self.faces,
            "tracks": self.tracks,
            "corrupt_frames": self.corrupt_frames,
            "corrupt_frame_numbers": self.corrupt,
            "rejects": [
                {"source_uri": r.source_uri, "reason": r.reason, "detail": r.detail} for r in self.rejects
            ],
            "sources": [s.as_dict() for s in self.sources],
            "detector": self.detector,
            "au_model": self.au_model,
            "emotion_model": self.emotion_model,
            "seconds": round(self.seconds, 3),
        }


class _Rows:
    def __init__(self, au_cols: list[str], emotions: list[str]):
        self.au_cols, self.emotions = au_cols, emotions
        self.cols: dict[str, list] = {name: [] for name in self.schema().names}

    def schema(self) -> pa.Schema:
        fields = [
            pa.field("frame", pa.int64()),
            pa.field("timestamp", pa.float64()),
            *(pa.field(k, pa.float32()) for k in ("x1", "y1", "x2", "y2", "score")),
            pa.field("track_id", pa.int64()),
            *(pa.field(a, pa.float32()) for a in self.au_cols),
            *(pa.field(f"{a}_present", pa.bool_()) for a in self.au_cols),
            *(pa.field(e, pa.float32()) for e in self.emotions),
            pa.field("emotion", pa.string()),
            pa.field("emotion_from_aus", pa.string()),
        ]
        return pa.schema(fields)

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=self.schema())


class _Averager:
    """Per track, the last N probability vectors; rows without a track are not averaged."""

    def __init__(self, n: int):
        self.n = n
        self.history: dict[int, deque] = {}

    def __call__(self, track_id: int | None, prob: np.ndarray) -> np.ndarray:
        if self.n <= 1 or track_id is None:
            return prob
        past = self.history.setdefault(track_id, deque(maxlen=self.n))
        past.append(prob)
        return np.mean(np.stack(past), axis=0)


def _color(track_id: int | None) -> tuple[int, int, int]:
    """A light colour per track (light on the dark text panel, distinct between tracks)."""
    if track_id is None:
        return (220, 220, 220)
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 140, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(v) for v in bgr)


FONT, FONT_SCALE, LINE_HEIGHT, TEXT_PAD = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 16, 3


def face_lines(face: Mapping[str, Any]) -> list[str]:
    """The annotated video's text for a face: track, emotion and its probability; the present AUs
    by number and FACS name; the emotion their pattern names (`emotion_from_aus`)."""
    tid = "-" if face["track_id"] is None else str(face["track_id"])
    aus = ", ".join(f"{n} {FACS_NAMES.get(n, '')}".strip() for n in face["aus_on"]) or "none present"
    return [
        f"#{tid} {face['emotion']} {face['p']:.2f}",
        f"AUs: {aus}",
        f"AU pattern: {face['emotion_from_aus'] or '-'}",
    ]


def label_origin(
    box: tuple[int, int, int, int], size: tuple[int, int], frame: tuple[int, int]
) -> tuple[int, int]:
    """Top-left corner of a text panel of `size` (w, h) for a face's `box`: above the box when it
    fits in the frame, else inside it under its top edge; always whole inside the frame."""
    x1, y1, _, _ = box
    w, h = size
    fw, fh = frame
    y = y1 - h - 2 if y1 - h - 2 >= 0 else y1 + 2
    return max(0, min(x1, fw - w)), max(0, min(y, fh - h))


STALE_AFTER_S = 24 * 3600  # a pid may be reused: a temporary untouched this long is stale regardless


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class AnnotatedVideo:
    """The MP4 of `--video`: every analyzed frame, with its faces' boxes, track ids and labels.
    Written beside the target under a temporary name (`.<stem>.<pid>.tmp.mp4`) and renamed onto it
    when the run ends well. The temporaries a killed run left for this target (of processes that
    are gone) are removed when the next one starts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tmp = self._tmp_name(os.getpid())
        self.remove_stale()
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _tmp_name(self, pid: int) -> Path:
        return self.path.with_name(f".{self.path.stem}.{pid}.tmp.mp4")

    def remove_stale(self) -> list[Path]:
        """Remove this target's temporaries whose writer is gone (kill -9); returns them."""
        pattern = re.compile(rf"\.{re.escape(self.path.stem)}\.(\d+)\.tmp\.mp4")
        removed = []
        for tmp in self.path.parent.glob(f".{glob.escape(self.path.stem)}.*.tmp.mp4"):
            m = pattern.fullmatch(tmp.name)
            if m and (not _pid_alive(int(m.group(1))) or _older_than(tmp, STALE_AFTER_S)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
                log.info("removed %s, left by a run that was killed", tmp)
        return removed

    def write(self, image: np.ndarray, faces: list[dict[str, Any]], fps: float) -> None:
        if self._writer is None:
            h, w = image.shape[:2]
            self.size = (w - w % 2, h - h % 2)  # even sides, as the codecs want
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, fps or DEFAULT_FPS, self.size)
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write an MP4 video there")
        out = as_bgr(image).copy()
        for f in faces:
            color = _color(f["track_id"])
            x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
            lines = face_lines(f)
            sizes = [cv2.getTextSize(t, FONT, FONT_SCALE, 1)[0] for t in lines]
            width = max(w for w, _ in sizes) + 2 * TEXT_PAD
            height = LINE_HEIGHT * len(lines) + 2 * TEXT_PAD
            x, y = label_origin((x1, y1, x2, y2), (width, height), (out.shape[1], out.shape[0]))
            # a dark panel under the text: legible on any background, the track's colour on it
            panel = out[y : y + height, x : x + width]
            panel[:] = (panel * 0.35).astype(out.dtype)
            for k, text in enumerate(lines):
                baseline = y + TEXT_PAD + LINE_HEIGHT * (k + 1) - 4
                cv2.putText(out, text, (x + TEXT_PAD, baseline), FONT, FONT_SCALE, color, 1, cv2.LINE_AA)
        if (out.shape[1], out.shape[0]) != self.size:
            out = cv2.resize(out, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(out)
        self.frames += 1

    def close(self, ok: bool = True) -> Path | None:
        """Finish the file: renamed onto the target when `ok`, else deleted. None when no frame came."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        if not ok:
            self._tmp.unlink(missing_ok=True)
            return None
        os.replace(self._tmp, self.path)
        return self.path


@contextlib.contextmanager
def _ctrl_c_ends(camera: bool) -> Iterator[threading.Event]:
    """For a camera run on the main thread, Ctrl-C sets the event (the run ends with what was seen
    after the frame at hand) instead of raising wherever the code happens to be, e.g. halfway
    through a batch's rows."""
    stop = threading.Event()
    if not camera or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class VideoAnalysis:
    """The pipeline of `analyze`, its state in one place: the settings, the detector, the AU and
    emotion models (loaded once, `run` may be called again), and per run the rows, the tracker,
    the batches in flight and the stop flag. Stages: read the inputs into batches (`_read`),
    detect a batch in a worker thread (`_submit`) while the batch before it is tracked, cropped and
    scored (`_finish` -> `_process` -> `_score` -> `_add_rows`).

    Raises (constructor): LookupError, ConfigError, FileNotFoundError as `analyze`.
    """

    def __init__(
        self, wh: Warehouse, settings: AnalyzeSettings | None = None, detector: Detector | None = None
    ):
        from labeling.curation.pseudo import resolve_model
        from labeling.detection.yolo_env import prepare_ultralytics_offline

        self.settings = settings = settings or AnalyzeSettings()
        self.au_id = resolve_model(wh, "au", settings.au_model)
        self.emo_id = resolve_model(wh, "emotion", settings.emotion_model)
        self.au, self.emo = self._load(wh, self.au_id), self._load(wh, self.emo_id)
        self.au_cut = au_thresholds(wh, self.au_id, len(self.au.labels))
        prepare_ultralytics_offline(wh.home / "ultralytics")
        if detector is None:
            from labeling.detection.detectors import load_detector

            detector = load_detector(resolve_detector(wh.home, settings.detector), device=settings.device)
        self.detector = detector
        self.au_cols = [au_number(label) for label in self.au.labels]
        self.au_ints = [int(c[2:]) if re.fullmatch(r"au\d+", c) else None for c in self.au_cols]
        self.measured = [n for n in self.au_ints if n is not None]
        self.emotions = list(self.emo.labels)

    def _load(self, wh: Warehouse, model_id: str) -> Predictor:
        from models.predict import Predictor

        # The detector's worker thread and the decoder's share the cores with the models: ONNX
        # Runtime's threads sleep between calls rather than spin (models.predict).
        s = self.settings
        return Predictor.load(
            wh, model_id, backend=s.backend, device=s.device, variant=s.model_variant, spin=False
        )

    # ---- a run ----------------------------------------------------------------------------------
    def _reset(self, video_out: str | Path | None) -> None:
        self.rows = _Rows(self.au_cols, self.emotions)
        self.averager = _Averager(self.settings.average)
        self.video = AnnotatedVideo(Path(video_out)) if video_out else None
        self.infos: list[SourceInfo] = []
        self.rejects: list[Reject] = []
        self.corrupt: list[int] = []
        self.trackers: dict[int, FaceTracker] = {}
        self.last_id = 0
        self.frames = self.with_faces = 0
        self.batch: list[_Frame] = []
        # The detector runs on a batch in a worker thread while this one tracks, crops and scores
        # the batch before it (OpenCV, ONNX Runtime and torch release the GIL): one batch in flight.
        self.inflight: deque[tuple[list[_Frame], Future]] = deque()
        self.held: list[Reject] = []  # decode rejects met while a batch is in flight: listed after its own
        self.stop = threading.Event()

    def run(
        self, sources: Sequence[str | Path], video_out: str | Path | None = None, show_progress: bool = False
    ) -> AnalysisResult:
        """Analyze `sources` (checked: `check_sources`) as `analyze` does.

        Raises:
            InputError: `video_out` is one of the input files.
        """
        s = self.settings
        if video_out is not None:
            check_not_an_input(video_out, sources, "video_out")
        self._reset(video_out)
        total = expected_frames(sources, s.stride) if show_progress else None
        if total is not None and s.max_frames:
            total = min(total, s.max_frames)
        self.bar = progress(desc="analyze", unit="frame", enabled=show_progress, total=total)
        started = time.perf_counter()
        self.detecting = ThreadPoolExecutor(1, thread_name_prefix="analyze-detect")
        ok = False
        try:
            self._read(sources)
            self._finish()
            if self.batch:
                self._process(self.batch, self.detector.detect([f.image for f in self.batch]))
            ok = True
        finally:
            self.detecting.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
            written = self.video.close(ok) if self.video is not None else None
        return self._result(time.perf_counter() - started, written)

    def _read(self, sources: Sequence[str | Path]) -> None:
        """Read the inputs into batches, each sent to the detector when full; until the inputs end,
        `max_frames` frames are read or the stop flag is set (Ctrl-C on a camera)."""
        s = self.settings
        taken = 0  # frames read into a batch
        stream = _input_frames(sources, s.stride, self.infos)
        with _ctrl_c_ends(any(is_camera(x) for x in sources)) as self.stop:
            for item in prefetch(stream, depth=s.batch_size):
                if isinstance(item, _Frame):
                    self.batch.append(item)
                    taken += 1
                    if len(self.batch) >= s.batch_size:
                        self._submit()
                    if s.max_frames and taken >= s.max_frames:
                        break
                elif isinstance(item, _Skipped):
                    self.corrupt.extend(item.frames)
                elif isinstance(item, Reject):
                    (self.held if self.inflight else self.rejects).append(item)
                if self.stop.is_set():
                    break

    def _submit(self) -> None:
        """Send the batch to the detector's thread; process what came before it meanwhile."""
        ready = self.batch.copy()
        self.batch.clear()
        self.inflight.append((ready, self.detecting.submit(self.detector.detect, [f.image for f in ready])))
        self._finish(keep=1)

    def _finish(self, keep: int = 0) -> None:
        """Process the batches in flight, oldest first, until `keep` are left."""
        while len(self.inflight) > keep:
            done, future = self.inflight[0]
            found = future.result()
            self.inflight.popleft()
            self._process(done, found)
        self.rejects.extend(self.held)
        self.held.clear()

    def _tracker_for(self, sid: int) -> FaceTracker:
        if sid not in self.trackers:
            for old in self.trackers.values():
                self.last_id = max(self.last_id, old.last_id)
            self.trackers.clear()  # one input at a time: a new input starts new tracks
            s = self.settings
            self.trackers[sid] = FaceTracker(s.track_buffer, s.match_threshold, first_id=self.last_id)
        return self.trackers[sid]

    def _process(self, chunk: list[_Frame], found: list[list[Detection]]) -> None:
        """Track, crop and score the faces of a batch the detector has seen; its rows (and frames of
        the annotated video) in frame order."""
        per_frame: list[tuple[_Frame, list[Detection], list[int | None], list[FaceCrop]]] = []
        for frame, dets in zip(chunk, found, strict=True):
            faces = [d for d in dets if d.label == "face"]
            ids = self._tracker_for(frame.source).update(frame.image, faces)
            crops, bad = crop_faces(
                frame.image,
                faces,
                margin=self.settings.margin,
                source_uri=self.infos[frame.source].source,
                frame_index=frame.frame,
            )
            self.rejects.extend(bad)
            per_frame.append((frame, faces, ids, crops))
        probs = iter(self._score([cr for *_, crops in per_frame for cr in crops]))
        for frame, faces, ids, crops in per_frame:
            self.with_faces += bool(crops)
            drawn = [
                self._add_row(frame, faces[crop.index], ids[crop.index], crop, next(probs)) for crop in crops
            ]
            if self.video is not None:
                self.video.write(frame.image, drawn, self.infos[frame.source].fps)
        self.frames += len(chunk)
        self.bar.update(len(chunk))

    def _score(self, crops: list[FaceCrop]) -> np.ndarray:
        """Per crop, the AU probabilities then the emotion ones, all the batch's crops at once."""
        if not crops:
            return np.empty((0, len(self.au_cols) + len(self.emotions)), np.float32)
        rgb = [cr.rgb for cr in crops]
        gray = [cr.gray for cr in crops]
        au_prob = self.au.predict_arrays(gray if self.au.config.channels == 1 else rgb)
        emo_prob = self.emo.predict_arrays(gray if self.emo.config.channels == 1 else rgb)
        return np.concatenate([au_prob, emo_prob], axis=1)

    def _add_row(
        self, frame: _Frame, d: Detection, tid: int | None, crop: FaceCrop, prob: np.ndarray
    ) -> dict[str, Any]:
        """The face's row (averaged over its track); returns what the annotated video draws."""
        s, c = self.settings, self.rows.cols
        p = self.averager(tid, prob)
        pa_, pe = p[: len(self.au_cols)], p[len(self.au_cols) :]
        present = pa_ >= self.au_cut
        top = int(np.argmax(pe))
        label = self.emotions[top] if pe[top] >= s.min_probability else UNCERTAIN
        on = [n for n, yes in zip(self.au_ints, present) if yes and n is not None]
        c["frame"].append(frame.frame)
        c["timestamp"].append(float(frame.timestamp))
        for key, v in zip(("x1", "y1", "x2", "y2"), crop.box):
            c[key].append(round(v, 2))  # as the detections table rounds them
        c["score"].append(d.score)
        c["track_id"].append(tid)
        for j, col in enumerate(self.au_cols):
            c[col].append(float(pa_[j]))
            c[f"{col}_present"].append(bool(present[j]))
        for j, e in enumerate(self.emotions):
            c[e].append(float(pe[j]))
        c["emotion"].append(label)
        c["emotion_from_aus"].append(emotion_from_aus(on, self.measured))
        return {
            "box": crop.box,
            "track_id": tid,
            "emotion": label,
            "p": float(pe[top]),
            "aus_on": on,
            "emotion_from_aus": c["emotion_from_aus"][-1],
        }

    def _result(self, seconds: float, written: Path | None) -> AnalysisResult:
        for info in self.infos:
            first, last = info.first_frame, info.first_frame + info.frames - 1
            info.corrupt_frames = sum(1 for n in self.corrupt if first <= n <= last)
        return AnalysisResult(
            table=self.rows.table(),
            frames=self.frames,
            frames_with_faces=self.with_faces,
            corrupt_frames=len(self.corrupt),
            sources=self.infos,
            rejects=self.rejects,
            detector=self.detector.name,
            au_model=self.au_id,
            emotion_model=self.emo_id,
            seconds=seconds,
            # what ran: the models' ids, not "the production model" of whenever it is read
            settings=self.settings.replace(au_model=self.au_id, emotion_model=self.emo_id),
            video=written,
            corrupt=sorted(self.corrupt),
        )


def analyze(
    wh: Warehouse,
    sources: str | Path | Sequence[str | Path],
    settings: AnalyzeSettings | None = None,
    video_out: str | Path | None = None,
    detector: Detector | None = None,
    show_progress: bool = False,
) -> AnalysisResult:
    """Analyze `sources` (a video, an image, a folder of them, or a camera index "0"; or a list):
    one row per face per frame (the columns of this module's docstring), with `video_out` an
    annotated MP4 of every analyzed frame. `detector` overrides `settings.detector` (tests, benchmarks).
    A camera runs until `settings.max_frames` or Ctrl-C, which ends the run with what was seen.

    Raises:
        InputError: nothing to analyze, or a camera that does not open.
        LookupError: no production model of a task and none given.
        ConfigError: a model id of the wrong task, or a bad setting.
        FileNotFoundError: no model of the id given.
    """
    items = [sources] if isinstance(sources, str | Path | int) else list(sources)
    items = [str(s) if isinstance(s, int) else s for s in items]
    check_sources(items)
    return VideoAnalysis(wh, settings, detector).run(items, video_out, show_progress)


# ---- output -----------------------------------------------------------------------------------
OUT_FORMATS = (".parquet", ".csv")


def settings_path(out: str | Path) -> Path:
    """Where the settings of the analysis written to `out` are kept: `<out>.settings.json`."""
    out = Path(out)
    return out.with_name(out.name + ".settings.json")


def save_analysis(result: AnalysisResult, out: str | Path) -> Path:
    """Write the rows to `out` (.parquet, with the run's summary as JSON in its metadata under
    "ferlab.analysis", or .csv) atomically, and the settings to `<out>.settings.json`
    (`AnalyzeSettings.load` reads it back).

    Raises:
        InputError: `out` is neither .parquet nor .csv.
        OSError: it cannot be written.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUT_FORMATS:
        raise InputError(f"--out {out}: give a .parquet or .csv file")
    summary = json.dumps(result.as_dict())
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            table = result.table.replace_schema_metadata({"ferlab.analysis": summary})
            pq.write_table(table, tmp, compression="zstd")
        else:
            pacsv.write_csv(result.table, tmp)
    atomic_write_bytes(settings_path(out), (result.settings.model_dump_json(indent=2) + "\n").encode())
    return out
