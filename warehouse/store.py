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

Paths never go into SQL text as they are: table files are read through DuckDB's relation API
(parameters), and the few DDL statements that must hold a path quote it as a SQL literal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.atomic import TMP_SUFFIX, atomic_path, atomic_write_bytes, is_stale_tmp
from warehouse.errors import StorageError, describe_os_error
from warehouse.hashing import sha256_bytes, stable_id
from warehouse.rejects import Reject, rejects_table
from warehouse.schemas import TABLES, TableSpec

_SCHEMA_PART = "part-0-schema.parquet"
_ROW = "__row"
_CURRENT = "__current"
QUARANTINE = "quarantine"
# Statements `Warehouse.query` runs without write=True: they can only read the views.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


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


@dataclass
class DoctorReport:
    """What `Warehouse.doctor` found (and, with repair, fixed)."""

    damaged_parts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (part, why)
    schema_parts: list[str] = dataclasses.field(default_factory=list)  # regenerated empty schema parts
    stale_tmp: list[str] = dataclasses.field(default_factory=list)  # temp files of killed writers
    quarantined: list[str] = dataclasses.field(default_factory=list)  # parts in quarantine/ (now and before)

    @property
    def healthy(self) -> bool:
        return not (self.damaged_parts or self.schema_parts or self.stale_tmp)

    def lines(self, repaired: bool) -> list[str]:
        done = "fixed" if repaired else "found"
        out = [
            f"damaged part ({done}: {'quarantined' if repaired else 'run with --repair'}): {p}: {why}"
            for p, why in self.damaged_parts
        ]
        out += [f"missing/broken schema part ({done}): {p}" for p in self.schema_parts]
        out += [f"stale temp file of a killed writer ({done}): {p}" for p in self.stale_tmp]
        out += [f"in quarantine: {p}" for p in self.quarantined]
        return out


class Warehouse:
    def __init__(self, home: str | Path, writable: bool = True):
        """Open (creating when needed) the data root `home`.

        Raises StorageError when the root cannot be created or, with `writable`, cannot be
        written (read-only file system, no permission): at once, before any work is done."""
        self.home = Path(home).expanduser().resolve()
        self.media_dir = self.home / "media"
        self.tables_dir = self.home / "tables"
        self.catalog_path = self.home / "warehouse.duckdb"
        self.quarantine_dir = self.home / QUARANTINE
        self._home_str = str(self.home)
        self._migrated: set[str] = set()  # tables whose parts _migrate has brought up to date
        try:
            if writable:
                self.media_dir.mkdir(parents=True, exist_ok=True)
                self._probe_writable()
            for spec in TABLES.values():
                self._ensure_schema_part(spec, write=writable)
            if writable and not self.catalog_path.exists():
                self.write_catalog()
        except OSError as exc:
            raise storage_error(exc, self.home) from exc

    def _probe_writable(self) -> None:
        probe = self.home / f".write-probe{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()

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
        return sorted(self.table_dir(name).glob("*.parquet"))

    def schema_mismatches(self) -> list[str]:
        """Table parts whose schema is not the contract's (written by a foreign or outdated
        writer): one "table/part: what differs" line each. The views read parts by column name,
        so such a part would otherwise pass on missing or retyped columns without a word."""
        found = []
        for name, spec in TABLES.items():
            want = {f.name: f.type for f in spec.schema}
            for part in self.parts(name):
                try:
                    have = {f.name: f.type for f in pq.read_schema(part)}
                except (OSError, pa.ArrowInvalid) as exc:
                    found.append(f"{name}/{part.name}: unreadable ({exc})")
                    continue
                diff = [f"missing {c}" for c in want if c not in have]
                diff += [f"unknown {c}" for c in have if c not in want]
                diff += [f"{c} is {have[c]}, not {t}" for c, t in want.items() if c in have and have[c] != t]
                if diff:
                    found.append(f"{name}/{part.name}: {', '.join(diff)}")
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
        n_updated = int(existed.sum())
        return LabelWrite(added=changed.num_rows - n_updated, updated=n_updated)

    def _migrate(self, spec: TableSpec) -> int:
        """Rewrite the parts of a table written before its `optional` columns (or its stamp) existed,
        with those columns null (each part atomically; the views read old parts meanwhile, by column name).
        Runs under the table's lock, before a write; returns how many parts were rewritten."""
        if not spec.optional or spec.name in self._migrated:
            return 0
        rewritten = 0
        for part in self.parts(spec.name):
            try:
                have = set(pq.read_schema(part).names)
            except (OSError, pa.ArrowInvalid):
                continue  # a damaged part is the doctor's, not the migration's
            missing = [c for c in (*spec.optional, spec.stamp) if c and c not in have]
            if not missing or part.name == _SCHEMA_PART:
                continue
            rows = pq.read_table(part)
            for column in missing:
                rows = rows.append_column(column, pa.nulls(rows.num_rows, spec.schema.field(column).type))
            try:
                with atomic_path(part) as tmp:
                    pq.write_table(rows.select(spec.schema.names).cast(spec.schema), tmp, compression="zstd")
            except OSError as exc:
                raise storage_error(exc, self.home) from exc
            rewritten += 1
        self._migrated.add(spec.name)
        return rewritten

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
        quarantining parts that cannot be read."""
        for attempt in range(2):
            try:
                con.read_parquet(self.table_glob(name), union_by_name=True).create_view(view, replace=True)
                return
            except duckdb.Error as exc:
                if attempt or not self.quarantine_damaged(name):
                    raise StorageError(
                        f"table {name} cannot be read ({_first_line(exc)}); run `ferlab doctor` "
                        f"on {self.home}"
                    ) from exc

    def _not_stored(self, spec: TableSpec, rows: pa.Table) -> pa.Table:
        rows = rows.append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
        with duckdb.connect() as con:
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
        with duckdb.connect() as con:
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
        with self.connect() as con:
            cols = ", ".join(quote_ident(c) for c in columns) if columns else "*"
            return con.sql(f"SELECT {cols} FROM {quote_ident(name)}").to_arrow_table()

    def count(self, name: str) -> int:
        with self.connect() as con:
            return con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchall()[0][0]

    # ---- damage ------------------------------------------------------------------------
    def _damaged_parts(self, name: str, deep: bool = False) -> list[tuple[Path, str]]:
        """Parts of `name` that do not read: their footer (or, when deep, every page)."""
        damaged = []
        for part in self.parts(name):
            try:
                if deep:
                    pq.read_table(part)
                else:
                    pq.read_metadata(part)
            except (OSError, pa.ArrowException) as exc:
                damaged.append((part, _first_line(exc)))
        return damaged

    def quarantine_damaged(self, name: str, deep: bool = False) -> int:
        """Move the parts of `name` that cannot be read to quarantine/ and record each as a
        `damaged_part` reject; return how many were moved. A damaged schema part holds no
        rows: it is written again instead."""
        damaged = self._damaged_parts(name, deep)
        rejects = []
        for part, why in damaged:
            if part.name == _SCHEMA_PART:
                self._ensure_schema_part(TABLES[name])
                continue
            target = self.quarantine_dir / "tables" / name / part.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target = target.with_name(f"{part.stem}-{time.time_ns()}{part.suffix}")
            os.replace(part, target)
            rejects.append(
                Reject(
                    "warehouse",
                    str(part),
                    "storage",
                    "damaged_part",
                    f"{why}; moved to {target.relative_to(self.home)}. Its rows are gone from {name}: "
                    "re-run the ingestion that wrote them to restore them",
                )
            )
        self.add_rejects(rejects)  # the damaged part is out of the way, so this table reads again
        return len(damaged)

    def doctor(self, repair: bool = False, deep: bool = True) -> DoctorReport:
        """Check every table part (every page when `deep`), the schema parts and temp files
        left by killed writers; with `repair`, quarantine damaged parts, rewrite schema parts
        and delete stale temp files."""
        report = DoctorReport()
        for name, spec in TABLES.items():
            schema_part = self.table_dir(name) / _SCHEMA_PART
            try:
                current = pq.read_schema(schema_part).equals(spec.schema, check_metadata=False)
            except (OSError, pa.ArrowInvalid):
                current = False
            if not current:
                report.schema_parts.append(str(schema_part))
                if repair:
                    self._ensure_schema_part(spec)
            for part, why in self._damaged_parts(name, deep):
                if part.name != _SCHEMA_PART:
                    report.damaged_parts.append((str(part), why))
            if repair and any(p.startswith(str(self.table_dir(name))) for p, _ in report.damaged_parts):
                self.quarantine_damaged(name, deep)
        for folder in (self.tables_dir, self.media_dir, self.home):
            pattern = "*" + TMP_SUFFIX
            found = folder.glob(pattern) if folder == self.home else folder.rglob(pattern)
            for tmp in found:
                if is_stale_tmp(tmp):
                    report.stale_tmp.append(str(tmp))
                    if repair:
                        tmp.unlink(missing_ok=True)
        if self.quarantine_dir.exists():
            report.quarantined = sorted(str(p) for p in self.quarantine_dir.rglob("*.parquet"))
        return report

    # ---- catalog -----------------------------------------------------------------------
    def _view_sql(self) -> list[str]:
        """The catalog's views, for the DuckDB file users open (DDL: the path is a quoted literal)."""
        stmts = []
        for name, spec in TABLES.items():
            stored = f"{name}_history" if spec.versioned else name
            stmts.append(
                f"CREATE OR REPLACE VIEW {quote_ident(stored)} AS SELECT * FROM "
                f"read_parquet({quote_literal(self.table_glob(name))}, union_by_name=true)"
            )
            if spec.versioned:
                stmts.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {_newest_sql(spec, stored)}")
        return stmts

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with one view per table (and `<table>_history` for labels): no
        lock on the catalog file, so any number of readers and writers can work at once. A
        part that cannot be read is quarantined (see the module docstring)."""
        con = duckdb.connect()
        try:
            for name, spec in TABLES.items():
                stored = f"{name}_history" if spec.versioned else name
                self._stored(con, name, stored)
                if spec.versioned:
                    con.execute(f"CREATE VIEW {quote_ident(name)} AS {_newest_sql(spec, stored)}")
            con.execute(f"SET file_search_path = {quote_literal(self.home)}")
        except BaseException:
            con.close()
            raise
        return con

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run one query over the views (any statement: this is the library's own access)."""
        with self.connect() as con:
            return con.sql(query, params=params).to_arrow_table()

    def query(self, query: str, write: bool = False) -> pa.Table:
        """Run a user's SQL over the views, read-only unless `write`.

        Read-only: only SELECT/EXPLAIN statements; files outside the data root's tables and
        media cannot be read; no extension can be installed or loaded; the settings are locked
        so the query cannot undo this. Raises ConfigError for a refused statement."""
        from warehouse.errors import ConfigError

        with self.connect() as con:
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


os.environ.setdefault("DUCKDB_NO_TELEMETRY", "1")
