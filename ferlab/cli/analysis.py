"""`ferlab analyze`, `ferlab analyze-disfa`, `ferlab face-detector`: the video analysis and its face detector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.cli.common import add_settings_flags, check_out_file, open_warehouse, settings_from_flags
from labeling.analysis.settings import AnalyzeSettings
from labeling.student.settings import StudentDetectorSettings


def cmd_analyze(args: argparse.Namespace) -> int:
    """`ferlab analyze`: one row per face per frame to --out (Parquet or CSV; default CSV on
    stdout, the summary then on stderr), --video an annotated MP4. Bad flags, inputs and outputs
    are refused before any model loads."""
    import io

    import pyarrow.csv as pacsv

    from labeling.analysis.analyze import (
        OUT_FORMATS,
        analyze,
        check_not_an_input,
        check_sources,
        save_analysis,
        settings_path,
    )
    from models.device import resolve_device
    from warehouse.errors import InputError, StorageError
    from warehouse.video import quiet_ffmpeg

    quiet_ffmpeg()  # a damaged video is ferlab's one reject line, not also FFmpeg's own on stderr
    settings = settings_from_flags(args, AnalyzeSettings)
    resolve_device(settings.device)
    sources = [str(s) for s in args.sources]
    check_sources(sources)
    out = video = None
    if args.out:
        if Path(args.out).suffix.lower() not in OUT_FORMATS:
            raise InputError(f"--out {args.out}: give a .parquet or .csv file")
        check_not_an_input(args.out, sources, "--out")
        out = check_out_file(args.out, "--out", example="analysis.parquet")
    if args.video:
        if Path(args.video).suffix.lower() != ".mp4":
            raise InputError(f"--video {args.video}: give an .mp4 file")
        check_not_an_input(args.video, sources, "--video")
        video = check_out_file(args.video, "--video", example="annotated.mp4")
    wh = open_warehouse(args, writable=False)
    result = analyze(wh, sources, settings, video_out=video, show_progress=True)
    report = sys.stdout
    if out:
        try:
            save_analysis(result, out)
        except OSError as exc:
            raise StorageError(
                f"{out}: cannot write the {result.faces} rows ({exc.strerror or exc}); "
                "free some space or choose another --out"
            ) from exc
        print(f"{result.faces} faces -> {out} (settings: {settings_path(out)})")
    else:
        buf = io.BytesIO()
        pacsv.write_csv(result.table, buf)
        sys.stdout.write(buf.getvalue().decode())
        report = sys.stderr
    print(result.summary(), file=report)
    if result.video:
        print(f"annotated video: {result.video}", file=report)
    for r in result.rejects[:10]:
        print(f"  rejected {r.reason}: {r.source_uri} {r.detail}", file=report)
    return 0


def cmd_analyze_disfa(args: argparse.Namespace) -> int:
    """`ferlab analyze-disfa SUBJECT`: the ingested subject's video analyzed and scored against its
    gold AU labels; table and report under <home>/analysis/disfa/SUBJECT/ (the `disfa_analysis` asset)."""
    from labeling.analysis.gold import analyze_disfa_subject
    from models.device import resolve_device

    settings = settings_from_flags(args, AnalyzeSettings)
    resolve_device(settings.device)
    r = analyze_disfa_subject(open_warehouse(args), args.subject, settings, camera=args.camera)
    print(f"table: {r.path}\nreport: {r.report['markdown']}")
    return 0


def cmd_face_detector(args: argparse.Namespace) -> int:
    from assets.resources import face_truth_csv
    from labeling.detection.detectors import load_detector
    from labeling.detection.yolo_env import prepare_ultralytics_offline
    from labeling.student.face_detector import train_face_detector

    settings = settings_from_flags(args, StudentDetectorSettings)
    wh = open_warehouse(args)
    prepare_ultralytics_offline(wh.home / "ultralytics")
    teacher = load_detector("teachers", device=settings.device)
    trained = train_face_detector(wh, teacher, settings, truth_csv=args.truth or face_truth_csv(wh.home))
    r = trained.report
    vs_truth = "n/a" if r.map50_vs_truth is None else f"{r.map50_vs_truth:.3f}"
    print(
        f"student: mAP50 {r.map50_vs_teacher:.3f} vs teacher, {vs_truth} vs truth; {r.train_images} train / "
        f"{r.val_images} val images, {r.epochs} epochs on {r.device} -> {trained.weights}"
    )
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _add_analyze(sub) -> None:
    analyze = sub.add_parser(
        "analyze",
        help="faces, tracks, AUs and emotions of a video, image, folder or camera: one row per face per frame",
        description="decode -> detect faces (this data root's YOLO student, else YuNet) -> track (ByteTrack) -> "
        "crop and align -> the production AU and emotion models (or --au-model / --emotion-model). Columns: "
        "frame, timestamp, x1, y1, x2, y2, score, track_id, au1 ... (probability per AU of the model), "
        "au1_present ..., one probability per emotion (angry ... neutral), emotion ('uncertain' below "
        "--min-probability), emotion_from_aus (Ekman's patterns; 'neutral' without AUs, empty when no "
        "pattern matches). --average N averages the probabilities over a face's track's last N frames. A frame "
        "that cannot be decoded is skipped and counted. The other flags are "
        "labeling.analysis.settings.AnalyzeSettings' fields; they are saved as <out>.settings.json.",
    )
    analyze.add_argument(
        "sources", nargs="+", help="a video, an image, a folder of them, or a camera index (0, 1, ...)"
    )
    analyze.add_argument("--out", type=Path, help="a .parquet or .csv file (default: CSV on stdout)")
    analyze.add_argument("--video", type=Path, help="an annotated .mp4: boxes, track ids and labels drawn")
    add_settings_flags(analyze, AnalyzeSettings)
    analyze.set_defaults(func=cmd_analyze)


def _add_analyze_disfa(sub) -> None:
    disfa = sub.add_parser(
        "analyze-disfa",
        help="an ingested DISFA subject's video through `analyze`, scored frame by frame against its gold AUs",
        description="The subject's video (as ingestion recorded it) through `ferlab analyze`, one face per frame "
        "(the highest detector score), joined by frame number to its gold AU labels: frames.parquet and a "
        "report (per-AU precision / recall / F1 of the presence, misses, probability vs gold intensity) under "
        "<home>/analysis/disfa/SUBJECT/. The other flags are labeling.analysis.settings.AnalyzeSettings' fields.",
    )
    disfa.add_argument("subject", help="an ingested DISFA subject: SN001, ...")
    disfa.add_argument("--camera", choices=["left", "right"], default="left", help="which camera's video")
    add_settings_flags(disfa, AnalyzeSettings)
    disfa.set_defaults(func=cmd_analyze_disfa)


def _add_face_detector(sub) -> None:
    face = sub.add_parser(
        "face-detector",
        help="train the YOLO student face detector on the warehouse's DISFA frames and scraped images",
        description="The teachers (YuNet + YOLO11n) label the images, a YOLO student learns their labels "
        "offline, and student.pt / student.onnx (with settings.json) replace <home>/models/face_detector/; "
        "the `auto` detector then uses it. The flags are labeling.student.settings.StudentDetectorSettings' fields.",
    )
    add_settings_flags(face, StudentDetectorSettings)
    face.add_argument(
        "--truth",
        type=Path,
        help="ground-truth face boxes (labeling.student.truth CSV) to score it against "
        "(default: <home>/sources/truth/faces.csv when there, as `ferlab demo` writes it)",
    )
    face.set_defaults(func=cmd_face_detector)


PARSERS = {
    "analyze": _add_analyze,
    "analyze-disfa": _add_analyze_disfa,
    "face-detector": _add_face_detector,
}
