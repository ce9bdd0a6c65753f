"""DISFA ingestion: video frames to `images`, per-frame AU intensities to `au_labels`.

Layout (DISFA as distributed; seed 000 uses it), names matched case-insensitively:
    ROOT/Videos_LeftCamera/LeftVideoSN001_comp.avi
    ROOT/Videos_RightCamera/RightVideoSN001_Comp.avi
    ROOT/ActionUnit_Labels/SN001/SN001_au1.txt   one "frame,intensity" line per frame, 1-based

A frame's image_id hashes the video's bytes and the frame number, so moving the data root or
re-running adds no image. Rows are written in bounded batches (media, then images, then
au_labels), so memory stays flat and a killed run leaves whole rows that a re-run completes.
Bad input becomes `rejects` rows and never stops the run; a root that holds no DISFA layout at
all is an `InputError` (a typo in the path must not look like an empty dataset).

Labels are a correction channel: every run hands every kept frame's labels to
`Warehouse.append_labels`, stored frames included, so an intensity edited in a label file
supersedes the stored one (the report counts it as updated). A re-run does not decode a video
whose kept frames are all stored already (see `_ingest_video`).

Names are matched case-insensitively, so two names can claim one thing (`SN001/` and `sn001/`,
`LeftVideoSN001_comp.avi` and `LeftVideosn001_comp.avi`, `SN001_au1.txt` and `sn001_AU1.txt`).
Which one the user meant is a guess, so none of them is used, and a reject names them all;
keeping one and re-running completes the subject (see `_ingest_subject`).

Reject reasons: missing_video, duplicate_video, subject_case_clash, missing_label_dir,
unreadable_video, truncated_video, lost_frames, encode_failed, missing_label_file,
label_file_case_clash, unreadable_label_file, frame_count_mismatch, and per label line:
empty_line, bad_field_count, non_numeric, non_integer, intensity_out_of_range,
frame_out_of_range, duplicate_frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.errors import ConfigError, InputError
from warehouse.hashing import sha256_file, stable_id
from warehouse.rejects import Reject
from warehouse.schemas import AU_PRESENT_THRESHOLD, DISFA_AUS
from warehouse.sources.common import IngestReport, progress
from warehouse.store import Warehouse
from warehouse.video import VideoDecode, avi_cut, decode_frames, first_lost, truncation_detail

SOURCE = "disfa"
ANNOTATOR = "disfa"
BATCH_FRAMES = 500
MAX_INTENSITY = 5
CAMERAS: tuple[str, ...] = ("left", "right")
_CAMERA_DIRS = {"videos_leftcamera": "left", "videos_rightcamera": "right"}
_LABELS_DIR = "actionunit_labels"
_VIDEO_RE = re.compile(r"^(left|right)video(sn\d+)_comp\.(avi|mp4|mkv|mov)$", re.IGNORECASE)
_SUBJECT_RE = re.compile(r"^sn\d+$", re.IGNORECASE)
_MAX_FRAME = np.iinfo(np.int32).max
_NUMBER_RE = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_EXPECTED_LAYOUT = (
    "expected Videos_LeftCamera/LeftVideoSN001_comp.avi... (or Videos_RightCamera/"
    "RightVideoSN001_Comp.avi...) and ActionUnit_Labels/SN001/SN001_au1.txt... in it"
)


# ---- layout ------------------------------------------------------------------------------
@dataclass
class _Layout:
    videos: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # subject -> camera -> files
    # subject -> its label folders; more than one when names differ only in case (a clash)
    label_dirs: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def subjects(self) -> set[str]:
        return set(self.videos) | set(self.label_dirs)


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _scan(root: Path) -> _Layout:
    layout = _Layout()
    for top in _children(root):
        name = top.name.lower()
        if name in _CAMERA_DIRS and top.is_dir():
            for video in _children(top):
                m = _VIDEO_RE.match(video.name)
                # The file's own prefix must agree with its folder (a LeftVideo in the right folder
                # would otherwise be stored twice under two cameras).
                if m and video.is_file() and m.group(1).lower() == _CAMERA_DIRS[name]:
                    cams = layout.videos.setdefault(m.group(2).upper(), {})
                    cams.setdefault(_CAMERA_DIRS[name], []).append(video)
        elif name == _LABELS_DIR and top.is_dir():
            for sub in _children(top):
                if sub.is_dir() and _SUBJECT_RE.match(sub.name):
                    layout.label_dirs.setdefault(sub.name.upper(), []).append(sub)
    return layout


def find_disfa_subjects(root: str | Path) -> list[str]:
    """Sorted subject ids ("SN001", ...) with a video in either camera folder or a label folder."""
    return sorted(_scan(Path(root)).subjects)


def _not_disfa(root: Path) -> InputError:
    """The error for a root with no DISFA subject at all, saying what was expected there."""
    if not root.exists():
        return InputError(f"DISFA folder {root} does not exist: {_EXPECTED_LAYOUT}")
    if not root.is_dir():
        return InputError(f"{root} is a file, not the DISFA folder: {_EXPECTED_LAYOUT}")
    # Pointing one level too high is the likely slip: name the folder that holds the layout.
    for child in _children(root):
        if child.is_dir() and _scan(child).subjects:
            return InputError(f"{root} holds no DISFA layout but {child} does: pass {child}")
    return InputError(f"{root} holds no DISFA layout: {_EXPECTED_LAYOUT}")


def _expected_video(root: Path, subject: str) -> Path:
    return root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"


# ---- labels --------------------------------------------------------------------------------
@dataclass
class _Labels:
    """One AU's usable labels from one file, sorted by frame (one row per frame)."""

    path: Path
    frames: np.ndarray  # int64
    intensity: np.ndarray  # float32
    lines: np.ndarray  # int64, 1-based line of each label
    n_lines: int  # data lines in the file: the frame count it claims


def _line_reject(path: Path, line_no: int, text: str, reason: str, why: str) -> Reject:
    shown = text if len(text) <= 80 else text[:77] + "..."
    line_no = int(line_no)  # numpy ints in, plain ints in the reject
    return Reject(SOURCE, str(path), "parse", reason, f"line {line_no} {shown!r}: {why}", line_no)


def _parse_labels(path: Path) -> tuple[_Labels, list[Reject]]:
    """Parse a `frame,intensity` file column-wise; each bad line becomes one reject."""
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    while lines and not lines[-1].strip():  # blank lines at the end are harmless
        lines.pop()
    n = len(lines)
    trimmed = pc.utf8_trim_whitespace(pa.array(lines, pa.string()))
    fields = pc.extract_regex(trimmed, r"^(?P<frame>[^,]*),(?P<value>[^,]*)$")
    two = fields.is_valid().to_numpy(zero_copy_only=False)
    empty = pc.equal(trimmed, "").to_numpy(zero_copy_only=False)
    frame_s = pc.utf8_trim_whitespace(pc.struct_field(fields, "frame").fill_null(""))
    value_s = pc.utf8_trim_whitespace(pc.struct_field(fields, "value").fill_null(""))
    frame_num = pc.match_substring_regex(frame_s, _NUMBER_RE).to_numpy(zero_copy_only=False)
    value_num = pc.match_substring_regex(value_s, _NUMBER_RE).to_numpy(zero_copy_only=False)
    # Cast only strings known to be numbers (a cast fails the whole column on one bad value).
    frame = pc.cast(pc.if_else(frame_num, frame_s, "0"), pa.float64()).to_numpy(zero_copy_only=False)
    value = pc.cast(pc.if_else(value_num, value_s, "0"), pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        frame_int = np.isfinite(frame) & (frame == np.floor(frame))
        value_int = np.isfinite(value) & (value == np.floor(value))

    # Each line gets the first problem that applies, in this order.
    checks = [
        (empty, "empty_line", "empty line inside the file"),
        (~two, "bad_field_count", "expected 2 comma-separated fields: frame,intensity"),
        (~(frame_num & value_num), "non_numeric", "frame and intensity must be numbers"),
        (~(frame_int & value_int), "non_integer", "frame and intensity must be whole numbers"),
        ((value < 0) | (value > MAX_INTENSITY), "intensity_out_of_range", "intensity must be 0..5"),
        # frame_index is int32; the upper end past the video's last frame is checked later.
        ((frame < 1) | (frame > _MAX_FRAME), "frame_out_of_range", "frames are numbered from 1"),
    ]
    bad = np.zeros(n, dtype=bool)
    rejects: list[Reject] = []
    for mask, reason, why in checks:
        hit = mask & ~bad
        rejects += [_line_reject(path, i + 1, lines[i], reason, why) for i in np.flatnonzero(hit)]
        bad |= hit
    good = np.flatnonzero(~bad)
    frames = frame[good].astype(np.int64)
    # np.unique keeps each frame's first line; later lines with that frame are duplicates.
    uniq, first = np.unique(frames, return_index=True)
    dup = np.setdiff1d(np.arange(len(good)), first)
    rejects += [
        _line_reject(path, good[i] + 1, lines[good[i]], "duplicate_frame", f"frame {frames[i]} seen before")
        for i in dup
    ]
    keep = good[first]
    labels = _Labels(path, uniq, value[keep].astype(np.float32), keep.astype(np.int64) + 1, n)
    return labels, sorted(rejects, key=lambda r: r.line or 0)


def _load_labels(label_dir: Path | None, subject: str) -> tuple[dict[int, _Labels], list[Reject]]:
    if label_dir is None:
        return {}, []
    files: dict[str, list[Path]] = {}
    for p in _children(label_dir):
        if p.is_file():
            files.setdefault(p.name.lower(), []).append(p)
    labels: dict[int, _Labels] = {}
    rejects: list[Reject] = []
    for au in DISFA_AUS:
        name = f"{subject}_au{au}.txt"
        found = files.get(name.lower(), [])
        if len(found) > 1:
            # Two files for one AU (`SN001_au1.txt`, `sn001_AU1.txt`): either could hold the
            # right values, so this AU gets none, like a missing file.
            rejects.append(
                Reject(
                    SOURCE,
                    str(found[0]),
                    "labels",
                    "label_file_case_clash",
                    f"AU{au} of {subject} has {len(found)} label files whose names differ only in case: "
                    f"{', '.join(map(str, found))}; none was used: keep one and re-run",
                )
            )
            continue
        path = found[0] if found else None
        if path is None:
            missing = label_dir / name
            rejects.append(
                Reject(
                    SOURCE, str(missing), "labels", "missing_label_file", f"no labels for AU{au}: {missing}"
                )
            )
            continue
        try:
            labels[au], bad = _parse_labels(path)
        except OSError as exc:
            rejects.append(Reject(SOURCE, str(path), "labels", "unreadable_label_file", str(exc)))
            continue
        rejects += bad
    return labels, rejects


def _au_rows(image_ids: list[str], frames: np.ndarray, labels: dict[int, _Labels]) -> pa.Table:
    """au_labels rows for the given frames, one per AU that has a label for the frame."""
    ids = np.asarray(image_ids, dtype=object)
    cols: dict[str, list[np.ndarray]] = {"image_id": [], "au": [], "intensity": []}
    for au, lab in labels.items():
        pos = np.searchsorted(lab.frames, frames)
        hit = pos < len(lab.frames)
        hit[hit] = lab.frames[pos[hit]] == frames[hit]
        cols["image_id"].append(ids[hit])
        cols["au"].append(np.full(int(hit.sum()), au, dtype=np.int16))
        cols["intensity"].append(lab.intensity[pos[hit]])
    image_id = np.concatenate(cols["image_id"]) if labels else np.array([], dtype=object)
    intensity = np.concatenate(cols["intensity"]) if labels else np.array([], dtype=np.float32)
    au = np.concatenate(cols["au"]) if labels else np.array([], dtype=np.int16)
    n = len(image_id)
    return pa.table(
        {
            "image_id": pa.array(image_id, pa.string()),
            "au": pa.array(au, pa.int16()),
            "intensity": pa.array(intensity, pa.float32()),
            "present": pa.array(intensity >= AU_PRESENT_THRESHOLD, pa.bool_()),
            "label_source": pa.array(["gold"] * n, pa.string()),
            "probability": pa.nulls(n, pa.float32()),
            "annotator": pa.array([ANNOTATOR] * n, pa.string()),
        }
    )


# ---- video ---------------------------------------------------------------------------------
def _stored_only(state: VideoDecode, kept: range) -> Iterator[tuple[int, None]]:
    """The kept frames of a video known to be whole and stored, without decoding it."""
    state.decoded = state.header_frames
    for n in kept:
        yield n, None


def _stored_frames(wh: Warehouse, video_id: str, digest: str, uri: str) -> tuple[set[int], bool]:
    """(The frames of this very video, by its bytes, that are stored; whether a decode reject
    is stored for the file at `uri`)."""
    with wh.connect() as con:
        rows = con.execute(
            "SELECT image_id, frame_index FROM images WHERE video_id = ?", [video_id]
        ).fetchall()
        flagged = con.execute(
            "SELECT count(*) FROM rejects WHERE source = ? AND stage = 'decode' AND source_uri = ?",
            [SOURCE, uri],
        ).fetchall()[0][0]
    stored = {n for image_id, n in rows if n is not None and image_id == stable_id(digest, n)}
    return stored, bool(flagged)


def _ingest_video(
    wh: Warehouse,
    report: IngestReport,
    video: Path,
    subject: str,
    camera: str,
    labels: dict[int, _Labels],
    stride: int,
    jpeg_quality: int,
    show_progress: bool,
    rejects: list[Reject],
) -> VideoDecode | None:
    """Store one camera's kept frames and pass their AU labels to the store (which adds new
    ones and supersedes edited ones); None when the video is unreadable.

    A re-run skips the decode of an AVI whose container is whole and whose kept frames are all
    stored: they were all decoded before, and the frame numbers (hence the image ids and the
    labels) come from the container's count alone. Anything less certain is decoded again: a
    cut or short file, frames missing from the store, frames stored past the declared count, a
    decode reject on record for the file (so its reject is reported again), or a container
    other than AVI (whose frame count is an estimate)."""
    uri = str(video.resolve())
    video_id = f"{subject}_{camera}"

    def unreadable(why: str) -> None:
        rejects.append(Reject(SOURCE, uri, "decode", "unreadable_video", why))

    try:
        size = video.stat().st_size
        digest = sha256_file(video) if size else ""
        is_avi, cut = avi_cut(video) if size else (False, None)
    except OSError as exc:
        unreadable(f"cannot read file: {exc}")
        return None
    if size == 0:
        unreadable("empty file (0 bytes)")
        return None
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            unreadable(f"OpenCV cannot open it ({size} bytes)")
            return None
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        state = VideoDecode(header_frames=max(header, 0), is_avi=is_avi, avi_cut=cut)
        stored, flagged = _stored_frames(wh, video_id, digest, uri)
        kept = range(1, state.header_frames + 1, stride)
        whole = (
            is_avi
            and cut is None
            and state.header_frames > 0
            and not flagged
            and stored.issuperset(kept)
            and max(stored, default=0) <= state.header_frames
        )

        rows: list[dict] = []
        batch_ids: list[str] = []
        batch_frames: list[int] = []

        def flush() -> None:
            if rows:
                report.add("images", wh.append("images", pa.Table.from_pylist(rows)))
            else:
                report.add("images", 0)
            au = _au_rows(batch_ids, np.asarray(batch_frames, dtype=np.int64), labels)
            report.count_labels("au_labels", wh.append_labels("au_labels", au))
            rows.clear()
            batch_ids.clear()
            batch_frames.clear()

        total = -(-state.header_frames // stride) if state.header_frames else None
        source = _stored_only(state, kept) if whole else decode_frames(cap, state, stride, stored)
        frames = progress(source, total, f"disfa {video_id}", show_progress)
        for n, img in frames:
            image_id = stable_id(digest, n)
            if img is not None:
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                if not ok:
                    rejects.append(Reject(SOURCE, uri, "decode", "encode_failed", f"frame {n}", n))
                    continue
                rows.append(
                    {
                        "image_id": image_id,
                        "source": SOURCE,
                        "source_uri": f"{uri}#frame={n}",
                        "subject": subject,
                        "video_id": video_id,
                        "frame_index": n,
                        "split": None,
                        "batch": subject,
                        "width": img.shape[1],
                        "height": img.shape[0],
                        "media_path": wh.put_media(buf.tobytes(), "jpg"),  # media before its row
                        "phash": None,
                    }
                )
            batch_ids.append(image_id)
            batch_frames.append(n)
            report.images_found += 1
            report.image_ids.append(image_id)
            if len(batch_frames) >= BATCH_FRAMES:
                flush()
        flush()
    finally:
        cap.release()

    if state.decoded == 0:
        unreadable(f"OpenCV opened it but decoded no frame ({size} bytes)")
        return None
    if state.lost_inside:
        rejects.append(
            Reject(
                SOURCE,
                uri,
                "decode",
                "lost_frames",
                f"decoded {state.decoded} of the {state.header_frames} frames the container declares, "
                "though the file is whole: OpenCV skipped damaged frames inside it, so the frames "
                "after them are stored (and labelled) up to "
                f"{state.header_frames - state.decoded} frame(s) early",
            )
        )
    elif state.short:
        lost: int | None = first_lost(state)
        if lost > state.expected:
            lost = None  # only the index was cut: every frame landed
        rejects.append(Reject(SOURCE, uri, "decode", "truncated_video", truncation_detail(state), lost))
    for lab in labels.values():
        if lab.n_lines != state.expected:
            rejects.append(
                Reject(
                    SOURCE,
                    str(lab.path),
                    "labels",
                    "frame_count_mismatch",
                    f"{lab.n_lines} label lines but {video.name} has {state.expected} frames",
                )
            )
    return state


# ---- entry point ---------------------------------------------------------------------------
def _ingest_subject(
    wh: Warehouse,
    report: IngestReport,
    root: Path,
    layout: _Layout,
    subject: str,
    stride: int,
    jpeg_quality: int,
    show_progress: bool,
) -> list[Reject]:
    """Store one subject; return its rejects.

    Case clashes (names are matched case-insensitively, so `SN001/` and `sn001/` both claim
    SN001): the clashing items are not used, whichever looks right, and one reject names them
    all. Two label folders: the subject's frames are stored without labels, as with a missing
    label folder; the video is not in doubt, and frames are keyed by its bytes, so once the user
    keeps one folder a re-run adds its labels to the stored frames without decoding again.
    Rejecting the frames too would only make that re-run slower. Two videos for one camera:
    that camera stores nothing (which recording the labels describe is the guess); the other
    camera's video, if any, is stored with the labels."""
    rejects: list[Reject] = []
    cams = layout.videos.get(subject, {})
    label_dirs = layout.label_dirs.get(subject, [])
    label_dir = label_dirs[0] if len(label_dirs) == 1 else None
    if len(label_dirs) > 1:
        rejects.append(
            Reject(
                SOURCE,
                str(label_dirs[0]),
                "labels",
                "subject_case_clash",
                f"{subject} has {len(label_dirs)} label folders whose names differ only in case: "
                f"{', '.join(map(str, label_dirs))}; none was used, so {subject} gets no labels: "
                "keep one folder and re-run",
            )
        )
    if not cams:
        expected = _expected_video(root, subject)
        rejects.append(
            Reject(
                SOURCE,
                str(expected),
                "discover",
                "missing_video",
                f"no video for {subject} in Videos_LeftCamera or Videos_RightCamera (expected {expected})",
            )
        )
        return rejects
    if not label_dirs:
        missing = root / "ActionUnit_Labels" / subject
        rejects.append(
            Reject(SOURCE, str(missing), "discover", "missing_label_dir", f"no AU labels folder {missing}")
        )
    labels, label_rejects = _load_labels(label_dir, subject)
    rejects += label_rejects

    expected: list[int] = []
    for camera in CAMERAS:
        videos = cams.get(camera, [])
        by_name: dict[str, list[Path]] = {}
        for video in videos:
            by_name.setdefault(video.name.lower(), []).append(video)
        clashes = [v for group in by_name.values() if len(group) > 1 for v in group]
        if clashes:
            shown = [str(v.resolve()) for v in clashes]
            rejects.append(
                Reject(
                    SOURCE,
                    shown[0],
                    "discover",
                    "subject_case_clash",
                    f"{subject} has {len(clashes)} {camera} videos whose names differ only in case: "
                    f"{', '.join(shown)}; none was stored: keep one and re-run",
                )
            )
            continue
        for extra in videos[1:]:
            rejects.append(
                Reject(
                    SOURCE,
                    str(extra),
                    "discover",
                    "duplicate_video",
                    f"{subject} has more than one {camera} video; used {videos[0].name}",
                )
            )
        if videos:
            state = _ingest_video(
                wh, report, videos[0], subject, camera, labels, stride, jpeg_quality, show_progress, rejects
            )
            if state is not None:
                expected.append(state.expected)

    # Frames past the end of both the file and the video: a typo, not a longer label file
    # (that one is a frame_count_mismatch).
    for lab in labels.values():
        limit = max([lab.n_lines, *expected])
        for i in np.flatnonzero(lab.frames > limit):
            rejects.append(
                Reject(
                    SOURCE,
                    str(lab.path),
                    "parse",
                    "frame_out_of_range",
                    f"line {lab.lines[i]}: frame {lab.frames[i]} is past the last frame ({limit})",
                    int(lab.lines[i]),
                )
            )
    return rejects


def ingest_disfa(
    wh: Warehouse,
    root: str | Path,
    subjects: list[str] | None = None,
    stride: int = 1,
    jpeg_quality: int = 95,
    show_progress: bool = True,
) -> IngestReport:
    """Ingest DISFA under `root` (all subjects found, or the given ones), keeping every
    `stride`-th frame (frames 1, 1+stride, ...). Re-running adds no image; label values edited
    since are stored (superseding the old ones) and counted in `report.updated`.

    Raises InputError when `root` is missing or holds no DISFA subject at all (a wrong path
    must not pass for an empty dataset); a root with the layout but broken subjects is ingested
    with rejects. Raises ConfigError for a stride below 1."""
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, not {stride}")
    root = Path(root)
    layout = _scan(root) if root.is_dir() else _Layout()
    if not layout.subjects:
        raise _not_disfa(root)
    wanted = sorted(layout.subjects) if subjects is None else [s.upper() for s in subjects]
    report = IngestReport(SOURCE)
    for table in ("images", "au_labels", "rejects"):
        report.add(table, 0)
    report.updated["au_labels"] = 0
    for subject in progress(wanted, len(wanted), "disfa subjects", show_progress):
        rejects = _ingest_subject(wh, report, root, layout, subject, stride, jpeg_quality, show_progress)
        report.rejects += rejects
        report.add("rejects", wh.add_rejects(rejects))  # per subject, so a killed run keeps them
    return report
