"""`ferlab ingest`, `ferlab detect`, `ferlab autolabel`: sources into the warehouse, detections, face crops."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.cli.common import (
    add_settings_flags,
    check_out_file,
    data_home,
    open_warehouse,
    settings_from_flags,
)
from labeling.detection.settings import AutoLabelSettings


def _print_report(report) -> int:
    print(report.summary())
    reasons: dict[str, int] = {}
    for r in report.rejects:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    for reason, n in sorted(reasons.items()):
        print(f"  rejected {n:>6}  {reason}")
    if report.rejects:
        print('  details: ferlab sql "SELECT reason, source_uri, line, detail FROM rejects"')
    return 0


def cmd_ingest_fer2013(args: argparse.Namespace) -> int:
    from warehouse.sources.fer2013 import ingest_fer2013

    # The data root opens (a new one writes its table schemas) while the CSV's first blocks are
    # parsed; a root that cannot be written is still the error reported.
    return _print_report(ingest_fer2013(lambda: open_warehouse(args), args.csv, threads=args.threads))


def cmd_ingest_disfa(args: argparse.Namespace) -> int:
    from warehouse.sources.disfa import ingest_disfa

    report = ingest_disfa(open_warehouse(args), args.root, subjects=args.subject or None, stride=args.stride)
    return _print_report(report)


def cmd_ingest_images(args: argparse.Namespace) -> int:
    from warehouse.sources.scraped import ingest_scraped

    return _print_report(ingest_scraped(open_warehouse(args), args.dir, batch=args.batch))


def cmd_detect(args: argparse.Namespace) -> int:
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline(data_home(args) / "ultralytics")
    return run_detect_cli(args.paths, args.detector, args.out, args.stride, args.batch_size, args.device)


def _listed(paths: list, most: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def run_detect_cli(
    paths: list,
    detector_spec: str = "teachers",
    out_parquet: str | Path | None = None,
    stride: int = 1,
    batch_size: int = 16,
    device: str = "auto",
) -> int:
    """`ferlab detect`: detections to a Parquet file (or as CSV on stdout, with the summary
    then on stderr so the CSV stays clean). Returns exit code 0.

    What would stop the run is found before the detector loads (minutes for the teachers on
    a large input, then lost): bad numbers, an unusable device or `--out`, nothing to detect.
    Those, a detector that cannot load and a Parquet file that cannot be written raise a
    FerlabError (ConfigError, InputError, UnsafeFileError, StorageError), one line for the CLI
    to print. A bad image or video is a reject, and the run goes on."""
    import io
    from collections import Counter

    import pyarrow.csv as pacsv

    from labeling.detection.detect import detect_files, write_parquet
    from labeling.detection.detectors import load_detector
    from labeling.detection.media import IMAGE_EXTS, VIDEO_EXTS, media_files
    from models.device import resolve_device
    from warehouse.errors import ConfigError, InputError, StorageError

    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, not {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, not {batch_size}")
    resolve_device(device)
    if out_parquet:
        out_parquet = check_out_file(out_parquet)
    files = media_files(paths)
    if not any(f.exists() for f in files):
        raise InputError(
            f"no image or video in {_listed(list(paths))}: looked for "
            f"{' '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))} (hidden files and folders skipped)"
        )
    detector = load_detector(detector_spec, device=device)
    table, frames, empty, rejects = detect_files(
        detector, files, stride=stride, batch_size=batch_size, show_progress=True
    )
    report = sys.stdout
    if out_parquet:
        try:
            write_parquet(table, out_parquet)
        except OSError as exc:
            raise StorageError(
                f"{out_parquet}: cannot write the {table.num_rows} detections ({exc.strerror or exc}); "
                "free some space or choose another --out"
            ) from exc
        print(f"{table.num_rows} detections by {detector.name} -> {out_parquet}")
    else:
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
        report = sys.stderr
    print(f"frames: {frames}, frames with no detection: {empty}", file=report)
    for reason, n in sorted(Counter(r.reason for r in rejects).items()):
        print(f"  rejected {n:>6}  {reason}", file=report)
    return 0


def cmd_autolabel(args: argparse.Namespace) -> int:
    from assets.resources import DetectorResource
    from labeling.detection.autolabel import autolabel, select_images

    settings = settings_from_flags(args, AutoLabelSettings)
    wh = open_warehouse(args)
    images = select_images(wh, source=args.source)
    detector = DetectorResource(**settings.model_dump()).load(wh.home)
    print(autolabel(wh, images, detector, settings, show_progress=True).summary())
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _add_ingest(sub) -> None:
    ingest = sub.add_parser("ingest", help="ingest a source into the warehouse")
    kinds = ingest.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    fer = kinds.add_parser("fer2013", help="the Kaggle fer2013.csv or .csv.gz (emotion,pixels,Usage)")
    fer.add_argument("csv", type=Path, help="path to fer2013.csv (gzipped too)")
    fer.add_argument("--threads", type=int, default=2, help="parser/encoder threads (default 2)")
    fer.set_defaults(func=cmd_ingest_fer2013)
    disfa = kinds.add_parser("disfa", help="a DISFA root (Videos_LeftCamera/, ActionUnit_Labels/)")
    disfa.add_argument("root", type=Path, help="the DISFA folder")
    disfa.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1: all)")
    disfa.add_argument("--subject", action="append", help="only this subject, e.g. SN001 (repeatable)")
    disfa.set_defaults(func=cmd_ingest_disfa)
    images = kinds.add_parser(
        "images", help="a folder of scraped images, optionally one sub-folder per emotion"
    )
    images.add_argument("dir", type=Path, help="the batch folder")
    images.add_argument("--batch", help="batch name (default: the folder's name)")
    images.set_defaults(func=cmd_ingest_images)


def _add_detect(sub) -> None:
    detect = sub.add_parser(
        "detect",
        help="detect faces and persons in images and videos; one row per detection",
        description="Rows: source_uri, frame_index, label, x1, y1, x2, y2, score, detector (+ ids and the "
        "weights' sha256). Frames with no detection are counted in the summary line.",
    )
    detect.add_argument("paths", nargs="+", type=Path, help="image files, videos or folders")
    detect.add_argument(
        "--detector",
        default="teachers",
        help="yunet (faces), yolo (packaged YOLO11n, persons), teachers (both; default) or a YOLO .pt/.onnx file",
    )
    detect.add_argument("--out", type=Path, help="write a Parquet file (default: CSV on stdout)")
    detect.add_argument("--stride", type=int, default=1, help="every N-th video frame (default 1)")
    detect.add_argument("--batch-size", type=int, default=16)
    detect.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    detect.set_defaults(func=cmd_detect)


def _add_autolabel(sub) -> None:
    autolab = sub.add_parser(
        "autolabel",
        help="detect and crop the faces of the warehouse's images (what the *_faces assets do)",
        description="The flags are labeling.detection.settings.AutoLabelSettings' fields. Rows are stored "
        "every --commit-every images, so a killed run resumes where it stopped; images this detector "
        "(same weights) has labeled at this margin are skipped, and the summary says how many.",
    )
    add_settings_flags(autolab, AutoLabelSettings)
    autolab.add_argument("--source", help="only the images of this source (fer2013, disfa, scraped)")
    autolab.set_defaults(func=cmd_autolabel)


PARSERS = {
    "ingest": _add_ingest,
    "detect": _add_detect,
    "autolabel": _add_autolabel,
}
