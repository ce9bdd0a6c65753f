"""What the command modules share: the data root and its warehouse, flags from settings classes, the
--out check, CSV on stdout, the one-line errors and the logging set-up."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from warehouse.paths import data_root


def data_home(args: argparse.Namespace) -> Path:
    """The data root: --home, else $FERLAB_HOME, else ./var."""
    return data_root(args.home)


def open_warehouse(args: argparse.Namespace, writable: bool = True):
    """The data root; checked writable at once (before any input is read) unless only read."""
    from warehouse import Warehouse

    home = data_home(args)
    return Warehouse(home, writable=writable or not home.exists())


def check_out_file(
    out: str | Path,
    flag: str = "--out",
    example: str = "detections.parquet",
) -> Path:
    """The file `flag` (--out, --video, ...) names, checked before anything is read or detected:
    not a folder, and in an existing folder that takes a new file (a missing folder is not
    created: a typo in it should not make a new tree). InputError, naming `flag`, otherwise."""
    import tempfile

    from warehouse.errors import InputError

    out = Path(out)
    if out.is_dir():
        raise InputError(f"{flag} {out} is a folder: give a file name, e.g. {out / example}")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{flag} {out}: {folder} {what}; create the folder or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(
            f"{flag} {out}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    return out


def record_materialization(home: Path, asset: str, metadata: dict[str, Any], description: str) -> None:
    """A CLI run recorded as a materialization of the asset it does the work of, in the data
    root's Dagster instance (`ferlab dev`'s): the UI shows it as it shows a run's. A failure to
    record is one warning line; the work itself is done."""
    from dagster import AssetMaterialization, DagsterInstance

    from ferlab.demo import prepare_dagster_home

    try:
        prepare_dagster_home(home)
        with DagsterInstance.get() as instance:
            instance.report_runless_asset_event(
                AssetMaterialization(asset_key=asset, metadata=metadata, description=description)
            )
    except Exception as exc:  # noqa: BLE001 - the UI misses a run; the work is not undone
        print(f"warning: not recorded in the Dagster UI as {asset}: {exc}", file=sys.stderr)


def write_csv(table) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(row.values())


def settings_from_flags(args: argparse.Namespace, settings_type):
    """The settings object from the flags given (the others keep the settings' defaults)."""
    return settings_type(**{n: getattr(args, n) for n in settings_type.model_fields if hasattr(args, n)})


def _flag_options(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse options for a settings field of this type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args)}
    if origin is tuple and get_origin(args[0]) is Literal:
        return {"nargs": "+", "choices": list(get_args(args[0]))}
    if origin is tuple:
        return {"nargs": "+", "type": args[0], "metavar": args[0].__name__.upper()}
    if origin in (Union, types.UnionType):  # X | None: "none" gives None (the settings' "unset")
        inner = next(a for a in args if a is not type(None))
        return {
            "type": lambda text: None if text.lower() == "none" else inner(text),
            "metavar": inner.__name__.upper(),
        }
    return {"type": annotation}


def add_settings_flags(parser: argparse.ArgumentParser, settings_type) -> None:
    """One --flag per field of a settings class (warehouse.settings.Settings), its description as the help.
    Flags not given are left out of the namespace, so the settings' own defaults apply."""
    for name, field in settings_type.model_fields.items():
        default = field.default
        shown = (
            "unset"
            if default is None
            else " ".join(map(str, default))
            if isinstance(default, tuple)
            else default
        )
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{field.description} (default: {shown})".replace("%", "%%"),
            **_flag_options(field.annotation, default),
        )
    parser.set_defaults(settings_type=settings_type)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line for the user and the exit code (2: the input or a setting, 1: anything else)."""
    import duckdb

    from warehouse.errors import FerlabError, describe_os_error

    if isinstance(exc, FerlabError):
        return str(exc), 2 if isinstance(exc, ValueError) else 1
    if isinstance(exc, OSError):
        return describe_os_error(exc), 2 if isinstance(exc, FileNotFoundError | IsADirectoryError) else 1
    if isinstance(exc, duckdb.Error):
        return f"SQL: {' '.join(str(exc).split())}", 2
    if isinstance(exc, ValueError | LookupError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 2
    return f"unexpected {type(exc).__name__}: {exc} (a bug: re-run with --debug and report the traceback)", 1


# The packages whose loggers the CLI shows (INFO, DEBUG with --debug); every other logger: WARNING and up.
PACKAGES = ("ferlab", "dagster_project", "assets", "labeling", "models", "warehouse")
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """To sys.stderr as it is when a record comes (a test or a caller may have replaced it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _not_ours(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] not in PACKAGES


def _replace_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)


def configure_logging(debug: bool = False) -> None:
    """The CLI's logging (again: replaced, not added): our packages' loggers at INFO (DEBUG with
    `debug`), other loggers at WARNING, one short line each on stderr. Library modules attach no
    handler: used as a library, they stay quiet.

    Our packages' lines are written by a handler on each package's logger, before a Dagster run's
    handler (managed_python_loggers, which rewrites the record for the run log) sees them; the root
    logger's handler writes the others' warnings."""
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    ours = _StderrHandler()
    ours.setFormatter(formatter)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        _replace_handler(logger, ours)
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
    others = _StderrHandler()
    others.setLevel(logging.WARNING)
    others.setFormatter(formatter)
    others.addFilter(_not_ours)  # written already, by `ours`
    root = logging.getLogger()
    _replace_handler(root, others)
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
