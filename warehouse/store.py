"""The data root: content-addressed media, append-only Parquet tables, a DuckDB catalog.

Layout under `home`:
    media/<ab>/<sha256>.<ext>         image files, named by the sha256 of their bytes
    tables/<table>/part-<hash>.parquet  rows, in parts; a part's name hashes its rows' keys
    tables/<table>/part-0-schema.parquet  an empty part, so a table with no rows still reads
    warehouse.duckdb                  one view per table over its parts (open it in DuckDB)

Appends are idempotent and atomic: rows whose key is already stored are dropped, the rest
go to a new part written to a temp file and renamed. A process killed midway leaves every
table readable; re-running completes it, because the rows that did land are skipped.
Label tables are versioned (`TableSpec.values`): a stored key with a new value gets a new row
that supersedes the old one; the views show the newest, `<table>_history` every version.

A part that cannot be read (truncated, overwritten) is moved to `quarantine/tables/<table>/`
and recorded as a `damaged_part` reject, so every other part and table stays readable;
re-running the ingestion that wrote it restores its rows. `doctor()` checks the whole root.

Every part is checked against its table's contract when the warehouse opens: its footer is read
(schema and statistics, no page) and compared by `schemas.part_differences`, which says what is
compatible (an older part without the columns added since is; a missing or retyped column, an
extra one, nulls in a key column are not). Unchecked, such a part is read by column name without
a word: nulls in its missing columns (a re-ingest then doubles its rows, the key no longer
matching), a view column turned VARCHAR, all-null rows from a foreign file. A writable open moves
it to quarantine like a damaged part (reason `schema_mismatch`, the detail naming the
difference), and a part whose footer does not read as `damaged_part`; a read-only open leaves
both in place, out of its views, with a warning. A part is read once: the check remembers each
good part by file identity (size, mtime_ns, ctime_ns, inode) under its table's contract in
`tables/.checked-parts.json`, so an open costs a directory listing and a stat per part.
A file standing where a folder of the root belongs (`tables/`, a table's folder, `media/`) is
moved to quarantine the same way (`not_a_folder`) and the folder made again.

Parts stay few as a table grows: after each write the table's parts are sorted into size tiers
(`Compaction`: a tier is `fanout` times the one below) and a tier holding `fanout` parts is merged
into one part of the tier above, so a table of N rows has O(log N) parts and each row is rewritten
O(log N) times. A merged part (`part-m-<hash>.parquet`) names the parts it replaces in its footer
(`ferlab.replaces`); every reader leaves those out, so the merge is published by one rename and a
reader never sees a row twice or misses one, whenever a process is killed. The replaced parts stay
on disk for `grace_s` (a connection opened before the merge still reads them) and are deleted by a
later write.

Paths never go into SQL text as they are: table files are read through DuckDB's relation API
(parameters), and the few DDL statements that must hold a path quote it as a SQL literal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.atomic import TMP_SUFFIX, atomic_path, atomic_write_bytes, is_stale_tmp, tmp_name
from warehouse.errors import StorageError, describe_os_error
from warehouse.hashing import sha256_bytes, stable_id
from warehouse.rejects import Reject, rejects_table
from warehouse.schemas import TABLES, TableSpec, part_differences

logger = logging.getLogger(__name__)

_SCHEMA_PART = "part-0-schema.parquet"
_MERGED = "part-m-"  # a merged part's name starts so; its footer lists the parts it replaces
REPLACES_KEY = b"ferlab.replaces"
_CHECKED = ".checked-parts.json"  # in tables/: parts whose footer matched their contract
_CHECK_VERSION = 1  # bump when what part_differences accepts changes: every part is read again
# Each table's contract, as the check cache knows it: a part checked under another is read again.
_CONTRACT_IDS = {
    name: stable_id(_CHECK_VERSION, spec.schema.to_string(show_schema_metadata=False), *spec.evolvable)[:16]
    for name, spec in TABLES.items()
}
# What a quarantined part's reject says after "moved to <where>.", per reason.
_LOST_ROWS = {
    "damaged_part": "Its rows are gone from {name}: re-run the ingestion that wrote them to restore them",
    "schema_mismatch": "Its rows are out of {name}: re-run the ingestion that wrote them to restore them "
    "(a file that never belonged there can be deleted)",
}
_ROW = "__row"
_CURRENT = "__current"
QUARANTINE = "quarantine"
# Statements `Warehouse.query` runs without write=True: they can only read the views.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
# The in-memory DuckDB every Warehouse.connect is a cursor of (see Warehouse._cursor).
_DB: duckdb.DuckDBPyConnection | None = None
_DB_PID = 0
_DB_LOCK = threading.Lock()


class SchemaError(ValueError):
    """Rows that do not fit a table's schema."""


def quote_literal(text: str) -> str:
    """`text` as a SQL string literal, for the DDL that cannot take parameters."""
    return "'" + str(text).replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class LabelWrite:
    """What a write to a versioned (label) table did."""

    added: int = 0  # keys that had no label yet
    updated: int = 0  # keys whose stored value changed: the new row supersedes the old one


@dataclass(frozen=True)
class Compaction:
    """When a table's parts are merged: size tiers, `fanout` times apart from `base_bytes` up;
    a tier holding `fanout` parts becomes one part of the tier above. Parts of `max_bytes` or more
    are left as they are. Replaced parts are deleted `grace_s` after their merge was published."""

    fanout: int = 8
    base_bytes: int = 1 << 20
    max_bytes: int = 1 << 30
    grace_s: float = 600.0

    def __post_init__(self) -> None:
        if self.fanout < 2 or self.base_bytes < 1 or self.max_bytes < self.base_bytes or self.grace_s < 0:
            raise ValueError(f"compaction settings out of range: {self}")

    def tier(self, size: int) -> int:
        tier, limit = 0, self.base_bytes
        while size >= limit:
            tier, limit = tier + 1, limit * self.fanout
        return tier


@dataclass(frozen=True)
class Merge:
    """One merge `Warehouse.compact` made: which table, how many parts into which one."""

    table: str
    parts: int
    rows: int
    into: str


@dataclass
class DoctorReport:
    """What `Warehouse.doctor` found (and, with repair, fixed)."""

    damaged_parts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (part, why)
    schema_mismatches: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (part, what differs)
    # files standing where a folder of the root belongs (tables/, a table's, media/)
    not_folders: list[str] = dataclasses.field(default_factory=list)
    schema_parts: list[str] = dataclasses.field(default_factory=list)  # regenerated empty schema parts
    stale_tmp: list[str] = dataclasses.field(default_factory=list)  # temp files of killed writers
    # files in quarantine/ (now and before), each with why when the rejects say
    quarantined: list[str] = dataclasses.field(default_factory=list)
    moved: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> where in quarantine/ it went

    @property
    def healthy(self) -> bool:
        return not (
            self.damaged_parts
            or self.schema_mismatches
            or self.not_folders
            or self.schema_parts
            or self.stale_tmp
        )

    def lines(self, repaired: bool) -> list[str]:
        done = "fixed" if repaired else "found"

        def state(path: str) -> str:
            if path in self.moved:
                return f"fixed: moved to {self.moved[path]}"
            return "fixed: quarantined" if repaired else "found: run with --repair"

        out = [f"damaged part ({state(p)}): {p}: {why}" for p, why in self.damaged_parts]
        out += [f"schema mismatch ({state(p)}): {p}: {why}" for p, why in self.schema_mismatches]
        out += [
            f"a file where a folder belongs ({state(p)}{', folder rebuilt' if p in self.moved else ''}): {p}"
            for p in self.not_folders
        ]
        out += [f"missing/broken schema part ({done}): {p}" for p in self.schema_parts]
        out += [f"stale temp file of a killed writer ({done}): {p}" for p in self.stale_tmp]
        out += [f"in quarantine: {p}" for p in self.quarantined]
        return out


class Warehouse:
    def __init__(self, home: str | Path, writable: bool = True, compaction: Compaction | None = None):
        """Open (creating when needed) the data root `home`; `compaction` says when parts are
        merged (the default `Compaction()` unless given).

        Raises StorageError when the root cannot be created or, with `writable`, cannot be
        written (read-only file system, no permission): at once, before any work is done.

        Every table part is checked against its table's contract (see the module docstring);
        with `writable`, parts off it (or unreadable) are quarantined and files standing where a
        folder belongs moved away (`opening_repairs` lists both), else they are left where they
        are and out of the views."""
        self.home = Path(home).expanduser().resolve()
        self.media_dir = self.home / "media"
        self.tables_dir = self.home / "tables"
        self.catalog_path = self.home / "warehouse.duckdb"
        self.quarantine_dir = self.home / QUARANTINE
        self._home_str = str(self.home)
        self.compaction = compaction or Compaction()
        self._migrated: set[str] = set()  # tables whose parts _migrate has brought up to date
        self._excluded: dict[str, set[str]] = {}  # table -> parts left out of the views (read-only open)
        # What this open repaired: (reason, path, why, where it went in quarantine/).
        self.opening_repairs: list[tuple[str, str, str, str]] = []
        try:
            rejects = self._ensure_folder(self.media_dir, write=writable)
            if writable:
                self._probe_writable()
            rejects += self._ensure_folder(self.tables_dir, write=writable)
            rejects += self._check_parts(write=writable)
            if rejects:
                self.add_rejects(rejects)
            if writable and not self.catalog_path.exists():
                self.write_catalog()
        except StorageError:
            raise
        except OSError as exc:
            raise storage_error(exc, self.home) from exc

    def _probe_writable(self) -> None:
        # one probe per process, thread and call: processes opening the root at once (several
        # runs, several machines) must not remove each other's
        probe = self.home / tmp_name("write-probe")
        probe.write_bytes(b"")
        probe.unlink()

    # ---- the open-time check ------------------------------------------------------------
    def _check_parts(self, write: bool) -> list[Reject]:
        """Check every table part against its table's contract, reading only the footers of
        parts not seen unchanged before (`tables/.checked-parts.json`), and make sure each table
        has its current schema part. With `write`, quarantine what is off the contract or
        unreadable, remember the good parts and return the rejects to record; else leave those
        parts out of the views."""
        cache = self._load_checked()
        checked: dict[str, dict] = {}
        found: list[tuple[str, Path, str, str]] = []  # (table, part, reason, why)
        rejects: list[Reject] = []
        for name, spec in TABLES.items():
            folder = self.table_dir(name)
            contract = _CONTRACT_IDS[name]
            known = cache.get(name, {})
            known = known.get("parts", {}) if known.get("contract") == contract else {}
            good: dict[str, list[int]] = {}
            try:
                with os.scandir(folder) as listing:
                    entries = [e for e in listing if e.name.endswith(".parquet")]
            except FileNotFoundError:
                entries = []
            except NotADirectoryError:
                entries = []
                rejects += self._ensure_folder(folder, write=write)
            replaced = _replaced_in(entries)  # merged away: no reader reads them again
            for entry in entries:
                if entry.name in replaced:
                    continue
                identity = _identity(entry)
                if identity is not None and known.get(entry.name) == identity:
                    good[entry.name] = identity
                elif entry.name == _SCHEMA_PART:
                    continue  # checked (and written again when outdated) below
                elif identity is None and not entry.is_symlink():
                    continue  # gone since the listing (quarantined or migrated by another process)
                elif (problem := _part_problem(Path(entry.path), spec)) is None:
                    if identity is not None:
                        good[entry.name] = identity
                else:
                    found.append((name, Path(entry.path), *problem))
            if write and _SCHEMA_PART not in good:  # (a read-only open has no use for it: the doctor's)
                self._ensure_schema_part(spec)
                identity = _identity(folder / _SCHEMA_PART)  # current now
                if identity is not None:
                    good[_SCHEMA_PART] = identity
            checked[name] = {"contract": contract, "parts": good}
        for name, part, reason, why in found:
            if write:
                try:
                    with self._locked(name):
                        moved = self._quarantine(name, part, reason, why)
                except OSError as exc:
                    logger.warning("%s: %s (%s); cannot move it to quarantine (%s)", part, reason, why, exc)
                    self._excluded.setdefault(name, set()).add(str(part))
                    continue
                if moved is not None:
                    rejects.append(moved[0])
                    self.opening_repairs.append((reason, str(part), why, moved[1]))
            else:
                logger.warning(
                    "%s: %s (%s); left out of the views: run `ferlab doctor --repair` on %s",
                    part,
                    reason.replace("_", " "),
                    why,
                    self.home,
                )
                self._excluded.setdefault(name, set()).add(str(part))
        if write and checked != {n: c for n, c in cache.items() if n in TABLES}:
            self._save_checked(checked)
        return rejects

    def _load_checked(self) -> dict[str, dict]:
        """The check cache: table -> {"contract": id, "parts": {file name: identity}}; {} when
        missing or unreadable (every part is then read once more)."""
        try:
            data = json.loads((self.tables_dir / _CHECKED).read_bytes())
            tables = data["tables"] if data.get("version") == _CHECK_VERSION else {}
            return {n: t for n, t in tables.items() if isinstance(t, dict)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_checked(self, checked: dict[str, dict]) -> None:
        data = json.dumps({"version": _CHECK_VERSION, "tables": checked}, separators=(",", ":"))
        try:
            # No fsync: a lost cache only means footers are read again.
            atomic_write_bytes(self.tables_dir / _CHECKED, data.encode(), durable=False)
        except OSError as exc:
            logger.debug("check cache not written: %s", exc)

    def _ensure_folder(self, folder: Path, write: bool = True) -> list[Reject]:
        """Make `folder` (media/, tables/, a table's folder) a folder; returns the rejects to
        record. A file (or a link to one) standing there is moved to quarantine and becomes a
        `not_a_folder` reject; without `write` it is only reported (a warning)."""
        if folder.is_dir():
            return []
        if not os.path.lexists(folder):
            if write:
                folder.mkdir(parents=True, exist_ok=True)
            return []
        if not write:
            logger.warning(
                "%s is a file, not a folder: run `ferlab doctor --repair` on %s", folder, self.home
            )
            return []
        reject, moved = self._move_file_for_folder(folder)
        self.opening_repairs.append(("not_a_folder", str(folder), "a file, not a folder", moved))
        return [reject]

    def _move_file_for_folder(self, folder: Path) -> tuple[Reject, str]:
        """Move the file standing at `folder` to quarantine and make the folder; returns the
        `not_a_folder` reject and where the file went (relative to the data root)."""
        rel = folder.relative_to(self.home)
        target = self.quarantine_dir / rel.parent / f"{folder.name}.not-a-folder-{time.time_ns()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        size = folder.lstat().st_size
        os.replace(folder, target)
        folder.mkdir(parents=True, exist_ok=True)
        moved = str(target.relative_to(self.home))
        detail = (
            f"a file ({size} bytes) stood where the folder {rel} belongs; moved to {moved}, and the folder "
            "made again. What the folder held is gone: re-run the ingestions that wrote it"
        )
        logger.warning("%s: %s", folder, detail)
        return Reject("warehouse", str(folder), "storage", "not_a_folder", detail), moved

    # ---- media -------------------------------------------------------------------------
    def put_media(self, data: bytes, ext: str) -> str:
        """Store bytes under their sha256; return the path relative to the data root.

        The file appears whole (warehouse.atomic: temp + rename) or not at all; StorageError
        when it cannot be written."""
        digest = sha256_bytes(data)
        rel = self.media_relpath(digest, ext)
        target = f"{self._home_str}/{rel}"
        if not os.path.exists(target):
            try:
                # No fsync: content-addressed files, tens of thousands of them; a lost one is
                # written again by the next ingestion of its source.
                atomic_write_bytes(target, data, durable=False)
            except OSError as exc:
                raise storage_error(exc, self.home) from exc
        return rel

    @staticmethod
    def media_relpath(digest: str, ext: str) -> str:
        return f"media/{digest[:2]}/{digest}.{ext.lstrip('.')}"

    def path(self, rel: str) -> Path:
        return self.home / rel

    # ---- tables ------------------------------------------------------------------------
    def table_dir(self, name: str) -> Path:
        return self.tables_dir / name

    def table_glob(self, name: str) -> str:
        return str(self.table_dir(name) / "*.parquet")

    def parts(self, name: str) -> list[Path]:
        """Every part file of `name` on disk, those merged into another still in their grace."""
        return sorted(self.table_dir(name).glob("*.parquet"))

    def live_parts(self, name: str) -> list[Path]:
        """The parts that hold `name`'s rows: every part but those a merged part replaces."""
        entries = _listing(self.table_dir(name))
        replaced = _replaced_in(entries)
        return sorted(Path(e.path) for e in entries if e.name not in replaced)

    def schema_mismatches(self) -> list[str]:
        """Parts off their table's contract (`schemas.part_differences`), one "table/part: what
        differs" line each: those in the tables' folders (a read-only open leaves them there, out
        of the views; an unreadable one is named too), and those an open quarantined for it that
        are still in `quarantine/tables/<table>/`: their rows are out of the table until someone
        looks (re-runs the ingestion, deletes the file). The ingest assets' blocking check reads
        this, so bad data stops the runs after it until then."""
        found = []
        for name, spec in TABLES.items():
            for part in self.parts(name):
                if part.name == _SCHEMA_PART:
                    continue
                problem = _part_problem(part, spec)
                if problem is not None:
                    reason, why = problem
                    found.append(
                        f"{name}/{part.name}: "
                        + (why if reason == "schema_mismatch" else f"unreadable ({why})")
                    )
            held = self.quarantine_dir / "tables" / name
            for part in sorted(held.glob("*.parquet")) if held.is_dir() else ():
                problem = _part_problem(part, spec)
                if problem is not None and problem[0] == "schema_mismatch":
                    found.append(f"{name}/{part.name} (in {held.relative_to(self.home)}/): {problem[1]}")
        return found

    def _ensure_schema_part(self, spec: TableSpec, write: bool = True) -> bool:
        """Make sure the table's empty schema part exists and is current; True if (re)written.

        It holds no rows, so a missing, empty or outdated one is simply written again."""
        part = self.table_dir(spec.name) / _SCHEMA_PART
        try:
            if pq.read_schema(part).equals(spec.schema, check_metadata=False):
                return False
        except (OSError, pa.ArrowInvalid):
            pass
        if not write:
            return False
        with atomic_path(part) as tmp:
            pq.write_table(spec.schema.empty_table(), tmp)
        return True

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        # One writer per table at a time, so the key check and the write are one step.
        lock_path = self.table_dir(name) / ".lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def conform(self, name: str, rows: pa.Table) -> pa.Table:
        """Cast rows to the table's schema, with a clear error naming what does not fit."""
        spec = TABLES[name]
        for column in (spec.stamp, *spec.optional) if spec.stamp else spec.optional:
            if column not in rows.column_names:  # the store stamps the write time; optional ones are null
                rows = rows.append_column(column, pa.nulls(rows.num_rows, spec.schema.field(column).type))
        missing = [f.name for f in spec.schema if f.name not in rows.column_names]
        extra = [c for c in rows.column_names if spec.schema.get_field_index(c) < 0]
        if missing or extra:
            raise SchemaError(f"{name}: missing columns {missing}, unknown columns {extra}")
        rows = rows.select(spec.schema.names)
        for field in spec.schema:
            if not field.nullable and rows.column(field.name).null_count:
                raise SchemaError(f"{name}.{field.name} has nulls but is not nullable")
        try:
            return rows.cast(spec.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise SchemaError(f"{name}: {exc}") from exc

    def append(self, name: str, rows: pa.Table) -> int:
        """Add the rows whose key is not stored yet; return how many were added.

        For a versioned (label) table, also rows whose key is stored with other values (they
        supersede it); `append_labels` says how many of each."""
        spec = TABLES[name]
        if spec.versioned:
            written = self.append_labels(name, rows)
            return written.added + written.updated
        rows = self.conform(name, rows)
        if rows.num_rows == 0:
            return 0
        rows = _first_per_key(rows, spec.key)
        with self._locked(name):
            self._migrate(spec)
            new = self._not_stored(spec, rows)
            if new.num_rows:
                self._write_part(name, new, _key_strings(new, spec.key))
                self._compact_locked(spec)
        return new.num_rows

    def append_labels(self, name: str, rows: pa.Table) -> LabelWrite:
        """Write label rows to a versioned table: a key not stored yet is added; a key stored
        with other values gets the new row, which supersedes the old one (kept in
        `<name>_history`); a key stored with the same values adds nothing."""
        spec = TABLES[name]
        if not spec.versioned:
            raise ValueError(f"{name} is not a versioned table; use append()")
        rows = self.conform(name, rows)
        if rows.num_rows == 0:
            return LabelWrite()
        rows = _first_per_key(rows, spec.key)
        with self._locked(name):
            self._migrate(spec)
            changed = self._changed_labels(spec, rows)
            if changed.num_rows == 0:
                return LabelWrite()
            existed = changed.column(_CURRENT).to_numpy(zero_copy_only=False)
            stamp = pa.array([dt.datetime.now(dt.UTC)] * changed.num_rows, spec.schema.field(spec.stamp).type)
            changed = changed.drop_columns([_CURRENT])
            changed = changed.set_column(changed.schema.get_field_index(spec.stamp), spec.stamp, stamp)
            # The write time is in the part name: a value that changes back (A -> B -> A) is a
            # new part, not a rewrite of the first one.
            changed = changed.cast(spec.schema)
            self._write_part(name, changed, [*_key_strings(changed, spec.key), str(time.time_ns())])
            self._compact_locked(spec)
        n_updated = int(existed.sum())
        return LabelWrite(added=changed.num_rows - n_updated, updated=n_updated)

    def _migrate(self, spec: TableSpec) -> int:
        """Rewrite the parts of a table written before its `optional` columns (or its stamp) existed,
        with those columns null (each part atomically; the views read old parts meanwhile, by column name).
        Runs under the table's lock, before a write; returns how many parts were rewritten."""
        if not spec.evolvable or spec.name in self._migrated:
            return 0
        rewritten = 0
        for part in self.parts(spec.name):
            try:
                schema = pq.read_schema(part)
            except (OSError, pa.ArrowInvalid):
                continue  # a damaged part is the doctor's, not the migration's
            missing = [c for c in spec.evolvable if c not in schema.names]
            if not missing or part.name == _SCHEMA_PART or part_differences(spec, schema):
                continue  # current, or off the contract (the next open quarantines it)
            rows = pq.read_table(part)
            for column in missing:
                rows = rows.append_column(column, pa.nulls(rows.num_rows, spec.schema.field(column).type))
            try:
                with atomic_path(part) as tmp:
                    current = rows.select(spec.schema.names).cast(spec.schema)
                    # a merged part keeps the list of the parts it replaces
                    pq.write_table(current.replace_schema_metadata(schema.metadata), tmp, compression="zstd")
            except OSError as exc:
                raise storage_error(exc, self.home) from exc
            rewritten += 1
        self._migrated.add(spec.name)
        return rewritten

    # ---- compaction ----------------------------------------------------------------------
    def compact(self, name: str | None = None, full: bool = False) -> list[Merge]:
        """Merge the parts of `name` (every table when None) as `self.compaction` says, or, with
        `full`, every live part of a table into one; delete replaced parts past their grace.
        Returns the merges made. Writes go on meanwhile (each table's lock is held per table)."""
        merges: list[Merge] = []
        for table in [name] if name else list(TABLES):
            spec = TABLES[table]
            with self._locked(table):
                self._migrate(spec)
                merges += self._compact_locked(spec, full=full)
        return merges

    def _compact_locked(self, spec: TableSpec, full: bool = False) -> list[Merge]:
        """Under the table's lock: delete the parts replaced longer than the grace ago, then merge
        while a tier holds `fanout` parts (or, `full`, all live parts into one)."""
        policy = self.compaction
        folder = self.table_dir(spec.name)
        merges: list[Merge] = []
        while True:
            entries = _listing(folder)
            by_name = {e.name: e for e in entries}
            replaced = _replaced_in(entries)
            past_grace = time.time_ns() - int(policy.grace_s * 1e9)
            for entry in entries:
                if (lineage := _lineage_of(entry)) and _identity(entry)[1] <= past_grace:
                    for old in lineage:
                        if old in by_name:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(by_name[old].path)
            live = []
            for entry in entries:
                if entry.name in replaced or entry.name == _SCHEMA_PART:
                    continue
                with contextlib.suppress(OSError):
                    live.append((entry, entry.stat().st_size))
            if full:
                group = [e for e, _ in live] if len(live) > 1 else []
            else:
                tiers: dict[int, list[os.DirEntry]] = {}
                for entry, size in live:
                    if size < policy.max_bytes:
                        tiers.setdefault(policy.tier(size), []).append(entry)
                full_tiers = [t for t, group in sorted(tiers.items()) if len(group) >= policy.fanout]
                group = tiers[full_tiers[0]] if full_tiers else []
            if not group:
                return merges
            merge = self._merge(spec, sorted(group, key=lambda e: e.name))
            if merge is None:
                return merges
            merges.append(merge)
            if full:
                full = False  # one part now; go on only to delete what is past its grace

    def _merge(self, spec: TableSpec, parts: list[os.DirEntry]) -> Merge | None:
        """Write `parts`' rows as one merged part naming them (and what they replaced) in its
        footer, published by one rename; None when a part cannot be read (left to the doctor)."""
        lineage = {e.name for e in parts}.union(*(_lineage_of(e) for e in parts))
        schema = spec.schema.with_metadata({REPLACES_KEY: json.dumps(sorted(lineage)).encode()})
        target = self.table_dir(spec.name) / f"{_MERGED}{stable_id(*(e.name for e in parts))[:32]}.parquet"
        rows = 0
        try:
            with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for entry in parts:
                    for batch in pq.ParquetFile(entry.path).iter_batches(batch_size=65_536):
                        # conform: a part older than an optional column gets it, null
                        writer.write_table(self.conform(spec.name, pa.Table.from_batches([batch])))
                        rows += batch.num_rows
        except (OSError, pa.ArrowException, SchemaError) as exc:
            logger.warning(
                "%s: parts not merged (%s); run `ferlab doctor` on %s", spec.name, _first_line(exc), self.home
            )
            return None
        logger.debug("%s: merged %d parts (%d rows) into %s", spec.name, len(parts), rows, target.name)
        return Merge(spec.name, len(parts), rows, target.name)

    def add_rejects(self, rejects: list[Reject]) -> int:
        return self.append("rejects", rejects_table(rejects)) if rejects else 0

    def _write_part(self, name: str, rows: pa.Table, identity: list[str]) -> None:
        part_name = "part-" + stable_id(*identity)[:32] + ".parquet"
        try:
            with atomic_path(self.table_dir(name) / part_name) as tmp:
                pq.write_table(rows, tmp, compression="zstd")
        except OSError as exc:
            raise storage_error(exc, self.home) from exc

    def _stored(self, con: duckdb.DuckDBPyConnection, name: str, view: str) -> None:
        """Register the table's stored rows (every part, every version) as `view` on `con`,
        quarantining parts that cannot be read; with no part to read (a read-only open of an
        older or broken root, every part left out), the contract's empty table."""
        sources = self._sources(name)
        for attempt in range(2):
            if not sources:
                break
            try:
                files = ", ".join(quote_literal(f) for f in sources)
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS "
                    f"SELECT * FROM read_parquet([{files}], union_by_name=true)"
                )
                return
            except duckdb.Error as exc:
                if not self.parts(name):
                    break  # no part at all: no folder, or an empty one
                if attempt or not self.quarantine_damaged(name):
                    raise StorageError(
                        f"table {name} cannot be read ({_first_line(exc)}); run `ferlab doctor` "
                        f"on {self.home}"
                    ) from exc
                sources = self._sources(name)
        con.register(view, TABLES[name].schema.empty_table())

    def _sources(self, name: str) -> list[str]:
        """What the views read for `name`: its live parts (merged ones replace theirs), but those a
        read-only open found off the contract."""
        excluded = self._excluded.get(name, ())
        return [str(p) for p in self.live_parts(name) if str(p) not in excluded]

    def _not_stored(self, spec: TableSpec, rows: pa.Table) -> pa.Table:
        rows = rows.append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
        with self._cursor() as con:
            con.register("new_rows", rows)
            self._stored(con, spec.name, "stored")
            on = " AND ".join(f"n.{quote_ident(k)} IS NOT DISTINCT FROM s.{quote_ident(k)}" for k in spec.key)
            keys = ", ".join(quote_ident(k) for k in spec.key)
            new = con.sql(
                f"SELECT n.* FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM "
                f"(SELECT {keys} FROM stored) s WHERE {on}) ORDER BY n.{_ROW}"
            ).to_arrow_table()
        return new.drop_columns([_ROW]).cast(spec.schema)

    def _changed_labels(self, spec: TableSpec, rows: pa.Table) -> pa.Table:
        """The rows whose key is not stored or whose values differ from the newest stored
        version, with a column `__current` saying whether the key was stored."""
        rows = rows.append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
        with self._cursor() as con:
            con.register("new_rows", rows)
            self._stored(con, spec.name, "stored")
            con.execute(f"CREATE TEMP VIEW cur AS {_newest_sql(spec, 'stored')}")
            on = " AND ".join(f"n.{quote_ident(k)} IS NOT DISTINCT FROM c.{quote_ident(k)}" for k in spec.key)
            differs = " OR ".join(
                f"n.{quote_ident(v)} IS DISTINCT FROM c.{quote_ident(v)}" for v in spec.values
            )
            changed = con.sql(
                f"SELECT n.*, c.{_CURRENT} IS NOT NULL AS {_CURRENT} FROM new_rows n "
                f"LEFT JOIN (SELECT *, true AS {_CURRENT} FROM cur) c ON {on} "
                f"WHERE c.{_CURRENT} IS NULL OR {differs} ORDER BY n.{_ROW}"
            ).to_arrow_table()
        return changed.drop_columns([_ROW])

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.connect([name]) as con:
            cols = ", ".join(quote_ident(c) for c in columns) if columns else "*"
            return con.sql(f"SELECT {cols} FROM {quote_ident(name)}").to_arrow_table()

    def count(self, name: str) -> int:
        with self.connect([name]) as con:
            return con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchall()[0][0]

    # ---- damage ------------------------------------------------------------------------
    def _part_problems(self, name: str, deep: bool = False) -> list[tuple[Path, str, str]]:
        """The parts of `name` (its schema part aside) that do not read, their footer or, when
        `deep`, every page (`damaged_part`), or are off the contract (`schema_mismatch`):
        (part, reason, why) each."""
        spec = TABLES[name]
        found = []
        for part in self.parts(name):
            if part.name != _SCHEMA_PART and (problem := _part_problem(part, spec, deep)) is not None:
                found.append((part, *problem))
        return found

    def _quarantine(self, name: str, part: Path, reason: str, why: str) -> tuple[Reject, str] | None:
        """Move `part` of `name` to quarantine/tables/<name>/; returns its reject (`reason`, with
        `why`) and where it went (relative to the data root), None when it was gone already
        (another process moved it)."""
        target = self.quarantine_dir / "tables" / name / part.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.with_name(f"{part.stem}-{time.time_ns()}{part.suffix}")
        try:
            os.replace(part, target)
        except FileNotFoundError:
            if os.path.lexists(part):
                raise
            return None
        moved = str(target.relative_to(self.home))
        logger.warning("%s: %s (%s); moved to %s", part, reason.replace("_", " "), why, moved)
        detail = f"{why}; moved to {moved}. " + _LOST_ROWS[reason].format(name=name)
        return Reject("warehouse", str(part), "storage", reason, detail), moved

    def quarantine_damaged(self, name: str, deep: bool = False) -> int:
        """Move the parts of `name` that cannot be read, or are off its contract, to quarantine/
        and record each as a `damaged_part` / `schema_mismatch` reject; return how many were
        moved (and schema parts written again: a damaged one holds no rows)."""
        fixed = int(self._ensure_schema_part(TABLES[name]))
        rejects = []
        for part, reason, why in self._part_problems(name, deep):
            moved = self._quarantine(name, part, reason, why)
            if moved is not None:
                rejects.append(moved[0])
        self.add_rejects(rejects)  # the damaged part is out of the way, so this table reads again
        return fixed + len(rejects)

    def doctor(self, repair: bool = False, deep: bool = True) -> DoctorReport:
        """Check every table part (every page when `deep`) and its schema against the contract,
        the schema parts, the root's folders and temp files left by killed writers; with
        `repair`, quarantine damaged parts and parts off the contract, move files standing where
        a folder belongs, rewrite schema parts and delete stale temp files. What a writable open
        of this warehouse repaired already is in the report as fixed."""
        report = DoctorReport()
        for reason, path, why, moved in self.opening_repairs:
            report.moved[path] = moved
            if reason == "not_a_folder":
                report.not_folders.append(path)
            elif reason == "schema_mismatch":
                report.schema_mismatches.append((path, why))
            else:
                report.damaged_parts.append((path, why))
        rejects: list[Reject] = []
        for folder in (self.media_dir, self.tables_dir, *(self.table_dir(n) for n in TABLES)):
            if os.path.lexists(folder) and not folder.is_dir():
                report.not_folders.append(str(folder))
                if repair:
                    reject, report.moved[str(folder)] = self._move_file_for_folder(folder)
                    rejects.append(reject)
        for name, spec in TABLES.items():
            schema_part = self.table_dir(name) / _SCHEMA_PART
            try:
                current = pq.read_schema(schema_part).equals(spec.schema, check_metadata=False)
            except (OSError, pa.ArrowInvalid):
                current = str(self.table_dir(name)) in report.not_folders  # reported as such
            if not current:
                report.schema_parts.append(str(schema_part))
                if repair:
                    self._ensure_schema_part(spec)
            problems = self._part_problems(name, deep)
            for part, reason, why in problems:
                (report.schema_mismatches if reason == "schema_mismatch" else report.damaged_parts).append(
                    (str(part), why)
                )
            if repair and problems:
                with self._locked(name):
                    for part, reason, why in problems:
                        if (moved := self._quarantine(name, part, reason, why)) is not None:
                            rejects.append(moved[0])
                            report.moved[str(part)] = moved[1]
        if rejects:
            self.add_rejects(rejects)
        for folder in (self.tables_dir, self.media_dir, self.home):
            pattern = "*" + TMP_SUFFIX
            found = folder.glob(pattern) if folder == self.home else folder.rglob(pattern)
            for tmp in found:
                if is_stale_tmp(tmp):
                    report.stale_tmp.append(str(tmp))
                    if repair:
                        tmp.unlink(missing_ok=True)
        if self.quarantine_dir.is_dir():
            held = sorted(p for p in self.quarantine_dir.rglob("*") if p.is_file() or p.is_symlink())
            why = self._quarantine_reasons([str(p.relative_to(self.home)) for p in held])
            report.quarantined = [
                f"{p} ({why[rel]})" if (rel := str(p.relative_to(self.home))) in why else str(p) for p in held
            ]
        return report

    def _quarantine_reasons(self, held: list[str]) -> dict[str, str]:
        """What the rejects say about the files in quarantine (`held`, relative to the data root):
        path -> "reason: why". Read from the rejects parts directly (the doctor does not lean on
        the views of a root it is checking); a part that does not read is skipped."""
        why: dict[str, str] = {}
        for part in self.parts("rejects"):
            try:
                rows = pq.read_table(part, columns=["stage", "reason", "detail"]).to_pylist()
            except (OSError, pa.ArrowException, KeyError):
                continue
            for row in rows:
                what, _, rest = (row["detail"] or "").partition("; moved to ")
                if row["stage"] != "storage" or not rest:
                    continue
                for rel in held:  # the detail goes on after the path with ". " or ", "
                    if rest.startswith((f"{rel}. ", f"{rel}, ")):
                        why[rel] = f"{row['reason']}: {what}"
        return why

    # ---- catalog -----------------------------------------------------------------------
    def _view_sql(self) -> list[str]:
        """The catalog's views, for the DuckDB file users open (DDL: the path is a quoted literal)."""
        stmts = []
        for name, spec in TABLES.items():
            stored = f"{name}_history" if spec.versioned else name
            parts = quote_literal(self.table_glob(name))
            # The parts a merged part replaces are left out as the library's views do, read from
            # the footers when the query runs (so the file stays right as parts merge).
            stmts.append(
                f"CREATE OR REPLACE VIEW {quote_ident(stored)} AS SELECT * EXCLUDE (__part) FROM "
                f"read_parquet({parts}, union_by_name=true, filename='__part') WHERE parse_filename(__part) "
                f"NOT IN (SELECT unnest(from_json(decode(value), '[\"VARCHAR\"]')) FROM "
                f"parquet_kv_metadata({parts}) WHERE decode(key) = {quote_literal(REPLACES_KEY.decode())})"
            )
            if spec.versioned:
                stmts.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {_newest_sql(spec, stored)}")
        return stmts

    @staticmethod
    def _cursor() -> duckdb.DuckDBPyConnection:
        """A new connection to the process's in-memory DuckDB (made on first use, and again in a
        forked child: a database is not carried over a fork); what it makes is temporary, its own."""
        global _DB, _DB_PID
        with _DB_LOCK:
            if _DB is None or os.getpid() != _DB_PID:
                _DB, _DB_PID = duckdb.connect(), os.getpid()
            return _DB.cursor()

    def connect(self, tables: Iterable[str] | None = None, fresh: bool = False) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table (and `<table>_history` for labels), or
        only for `tables` (names as in SQL, `_history` ones included): no lock on the catalog
        file, so any number of readers and writers can work at once. A part that cannot be read
        is quarantined (see the module docstring). The connection is a cursor of this
        process's in-memory database (starting a database costs more than most queries), its
        views temporary (its own); `fresh`: a database of its own, for settings that would
        reach every cursor (the read-only sandbox of `query`)."""
        wanted = None if tables is None else {t.removesuffix("_history") for t in tables}
        con = duckdb.connect() if fresh else self._cursor()
        try:
            for name, spec in TABLES.items():
                if wanted is not None and name not in wanted:
                    continue
                stored = f"{name}_history" if spec.versioned else name
                self._stored(con, name, stored)
                if spec.versioned:
                    con.execute(f"CREATE TEMP VIEW {quote_ident(name)} AS {_newest_sql(spec, stored)}")
            con.execute(f"SET file_search_path = {quote_literal(self.home)}")
        except BaseException:
            con.close()
            raise
        return con

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run one query over the views (any statement: this is the library's own access)."""
        with self.connect(_tables_in(query)) as con:
            return con.sql(query, params=params).to_arrow_table()

    def query(self, query: str, write: bool = False) -> pa.Table:
        """Run a user's SQL over the views, read-only unless `write`.

        Read-only: only SELECT/EXPLAIN statements; files outside the data root's tables and
        media cannot be read; no extension can be installed or loaded; the settings are locked
        so the query cannot undo this. Raises ConfigError for a refused statement."""
        from warehouse.errors import ConfigError

        with self.connect(None if write else _tables_in(query), fresh=True) as con:
            statements = con.extract_statements(query)
            if not statements:
                raise ConfigError("no SQL statement given")
            if not write:
                refused = [s.type.name for s in statements if s.type.name not in READ_ONLY_STATEMENTS]
                if refused:
                    raise ConfigError(
                        f"`ferlab sql` is read-only: {', '.join(refused)} statements need --write"
                    )
                allowed = [str(self.tables_dir) + os.sep, str(self.media_dir) + os.sep]
                con.execute("SET allowed_directories = ?", [allowed])
                con.execute("SET enable_external_access = false")
                con.execute("SET autoinstall_known_extensions = false")
                con.execute("SET autoload_known_extensions = false")
                con.execute("SET lock_configuration = true")
            for statement in statements[:-1]:
                con.execute(statement)
            result = con.sql(statements[-1].query)
            return result.to_arrow_table() if result is not None else pa.table({})

    def write_catalog(self) -> None:
        """(Re)write warehouse.duckdb, for users who open the data root in DuckDB."""
        with atomic_path(self.catalog_path) as tmp:
            tmp.unlink(missing_ok=True)
            con = duckdb.connect(str(tmp))
            for stmt in self._view_sql():
                con.execute(stmt)
            con.close()
            wal = Path(str(tmp) + ".wal")
            wal.unlink(missing_ok=True)


def _tables_in(query: str) -> set[str] | None:
    """The tables `query` names (so only their views are made), None when DuckDB cannot tell
    without the tables (a join USING their columns): then every view is made."""
    try:
        return duckdb.get_table_names(query)
    except duckdb.Error:
        return None


def _newest_sql(spec: TableSpec, stored: str) -> str:
    """The newest version of each key of a versioned table (rows written before versioning,
    with no stamp, are the oldest)."""
    keys = ", ".join(quote_ident(k) for k in spec.key)
    return (
        f"SELECT * FROM {quote_ident(stored)} QUALIFY row_number() OVER "
        f"(PARTITION BY {keys} ORDER BY {quote_ident(spec.stamp)} DESC NULLS LAST) = 1"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def storage_error(exc: OSError, home: Path) -> StorageError:
    """An OSError met while using the data root as one clear StorageError."""
    return StorageError(f"data root {home}: {describe_os_error(exc)}")


def _key_strings(rows: pa.Table, key: tuple[str, ...]) -> list[str]:
    cols = [pc.cast(rows.column(k), pa.string()).fill_null("\x00").to_pylist() for k in key]
    return ["\x1e".join(parts) for parts in zip(*cols)]


def _first_per_key(rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """Drop later rows that repeat an earlier row's key (keeps input order)."""
    indexed = rows.append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
    first = indexed.group_by(list(key), use_threads=False).aggregate([(_ROW, "min")])
    keep = pc.sort_indices(first.column(f"{_ROW}_min"))
    take = pc.take(first.column(f"{_ROW}_min"), keep)
    if len(take) == rows.num_rows:
        return rows
    return rows.take(take)


def _identity(entry: os.DirEntry | Path) -> list[int] | None:
    """What tells a part's file from any other: (size, mtime_ns, ctime_ns, inode); None when
    it cannot be stat'ed (gone, or a broken link)."""
    try:
        st = entry.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _listing(folder: Path) -> list[os.DirEntry]:
    """The part files in a table's folder (none when it is missing or not a folder)."""
    try:
        with os.scandir(folder) as listing:
            return [e for e in listing if e.name.endswith(".parquet")]
    except (FileNotFoundError, NotADirectoryError):
        return []


# (path, identity) -> the part names a merged part replaces; a file's footer is read once
_LINEAGES: dict[tuple[str, tuple[int, ...]], tuple[str, ...]] = {}


def _lineage(path: str, identity: list[int]) -> tuple[str, ...]:
    """The parts the merged part at `path` replaces, from its footer; () when it does not read
    (a damaged merged part is quarantined by the check, and what it replaced reads again)."""
    key = (path, tuple(identity))
    found = _LINEAGES.get(key)
    if found is None:
        try:
            raw = (pq.read_metadata(path).metadata or {}).get(REPLACES_KEY, b"[]")
            found = tuple(str(n) for n in json.loads(raw))
        except (OSError, pa.ArrowException, ValueError, TypeError):
            found = ()
        if len(_LINEAGES) > 65_536:
            _LINEAGES.clear()
        _LINEAGES[key] = found
    return found


def _lineage_of(entry: os.DirEntry) -> tuple[str, ...]:
    """The parts `entry` replaces: () for a part that is not a merged one (or is gone)."""
    if not entry.name.startswith(_MERGED) or (identity := _identity(entry)) is None:
        return ()
    return _lineage(entry.path, identity)


def _replaced_in(entries: list[os.DirEntry]) -> set[str]:
    """The names of the parts that the merged parts among `entries` replace."""
    return set().union(*(_lineage_of(e) for e in entries))


def _read_footer(path: Path) -> pq.FileMetaData:
    """A part's footer: its schema and its column chunks' statistics, no page read."""
    return pq.read_metadata(path)


def _part_problem(part: Path, spec: TableSpec, deep: bool = False) -> tuple[str, str] | None:
    """Why `part` cannot be one of `spec`'s parts: ("damaged_part", why) when its footer (or,
    when `deep`, a page) does not read, ("schema_mismatch", what differs) when its schema is off
    the contract (`schemas.part_differences`); None when it is fine."""
    try:
        footer = _read_footer(part)
        schema = footer.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return "damaged_part", _first_line(exc)
    differences = part_differences(spec, schema, _null_counts(footer, spec))
    if differences:
        return "schema_mismatch", "; ".join(differences)
    if deep:
        try:
            pq.read_table(part)
        except (OSError, pa.ArrowException) as exc:
            return "damaged_part", _first_line(exc)
    return None


def _null_counts(footer: pq.FileMetaData, spec: TableSpec) -> dict[str, int]:
    """How many nulls the footer's statistics count in each column the contract declares not
    nullable (a column without statistics counts none)."""
    required = {f.name for f in spec.schema if not f.nullable}
    counts: dict[str, int] = {}
    for i in range(footer.num_row_groups):
        group = footer.row_group(i)
        for j in range(group.num_columns):
            column = group.column(j)
            if column.path_in_schema not in required:
                continue
            stats = column.statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                counts[column.path_in_schema] = counts.get(column.path_in_schema, 0) + stats.null_count
    return counts


os.environ.setdefault("DUCKDB_NO_TELEMETRY", "1")
