"""The data root: content-addressed media, append-only Parquet tables, a DuckDB catalog.

Layout under `home`:
    media/<ab>/<sha256>.<ext>         image files, named by the sha256 of their bytes
    tables/<table>/part-<hash>.parquet  rows, in parts; a part's name hashes its rows' keys
    tables/<table>/part-0-schema.parquet  an empty part, so a table with no rows still reads
    warehouse.duckdb                  one view per table over its parts (open it in DuckDB)

Appends are idempotent and atomic: rows whose key is already stored are dropped, the rest
go to a new part written to a temp file and renamed. A process killed midway leaves every
table readable; re-running completes it, because the rows that did land are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.atomic import atomic_path
from warehouse.hashing import sha256_bytes, stable_id
from warehouse.rejects import Reject, rejects_table
from warehouse.schemas import TABLES, TableSpec

_SCHEMA_PART = "part-0-schema.parquet"
_ROW = "__row"


class SchemaError(ValueError):
    """Rows that do not fit a table's schema."""


class Warehouse:
    def __init__(self, home: str | Path):
        self.home = Path(home).expanduser().resolve()
        self.media_dir = self.home / "media"
        self.tables_dir = self.home / "tables"
        self.catalog_path = self.home / "warehouse.duckdb"
        self._home_str = str(self.home)
        self._media_dirs: set[str] = set()
        self.media_dir.mkdir(parents=True, exist_ok=True)
        for spec in TABLES.values():
            self._ensure_schema_part(spec)
        if not self.catalog_path.exists():
            self.write_catalog()

    # ---- media -------------------------------------------------------------------------
    def put_media(self, data: bytes, ext: str) -> str:
        """Store bytes under their sha256; return the path relative to the data root.

        Hot path (tens of thousands of small files per ingest): plain string paths and
        os calls; the file appears whole (temp + rename) or not at all."""
        digest = sha256_bytes(data)
        rel = self.media_relpath(digest, ext)
        target = f"{self._home_str}/{rel}"
        if not os.path.exists(target):
            folder = target.rsplit("/", 1)[0]
            if folder not in self._media_dirs:
                os.makedirs(folder, exist_ok=True)
                self._media_dirs.add(folder)
            tmp = f"{folder}/.{digest}.{os.getpid()}-{threading.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, target)
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

    def _ensure_schema_part(self, spec: TableSpec) -> None:
        part = self.table_dir(spec.name) / _SCHEMA_PART
        if part.exists() and pq.read_schema(part).equals(spec.schema, check_metadata=False):
            return
        with atomic_path(part) as tmp:
            pq.write_table(spec.schema.empty_table(), tmp)

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
        """Add the rows whose key is not stored yet; return how many were added."""
        spec = TABLES[name]
        rows = self.conform(name, rows)
        if rows.num_rows == 0:
            return 0
        rows = _first_per_key(rows, spec.key)
        with self._locked(name):
            new = self._not_stored(spec, rows)
            if new.num_rows:
                part_name = "part-" + stable_id(*_key_strings(new, spec.key))[:32] + ".parquet"
                with atomic_path(self.table_dir(name) / part_name) as tmp:
                    pq.write_table(new, tmp, compression="zstd")
        return new.num_rows

    def add_rejects(self, rejects: list[Reject]) -> int:
        return self.append("rejects", rejects_table(rejects)) if rejects else 0

    def _not_stored(self, spec: TableSpec, rows: pa.Table) -> pa.Table:
        rows = rows.append_column(_ROW, pa.array(range(rows.num_rows), pa.int64()))
        con = duckdb.connect()
        con.register("new_rows", rows)
        on = " AND ".join(f'n."{k}" IS NOT DISTINCT FROM s."{k}"' for k in spec.key)
        keys = ", ".join(f'"{k}"' for k in spec.key)
        new = con.sql(
            f"SELECT n.* FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM "
            f"(SELECT {keys} FROM read_parquet('{self.table_glob(spec.name)}', union_by_name=true)) s "
            f"WHERE {on}) ORDER BY n.{_ROW}"
        ).to_arrow_table()
        con.close()
        return new.drop_columns([_ROW]).cast(spec.schema)

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.connect() as con:
            cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
            return con.sql(f"SELECT {cols} FROM {name}").to_arrow_table()

    def count(self, name: str) -> int:
        with self.connect() as con:
            return con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]

    # ---- catalog -----------------------------------------------------------------------
    def _view_sql(self) -> list[str]:
        return [
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM "
            f"read_parquet('{self.table_glob(name)}', union_by_name=true)"
            for name in TABLES
        ]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with one view per table: no lock on the catalog file, so any
        number of readers and writers can work at once."""
        con = duckdb.connect()
        for stmt in self._view_sql():
            con.execute(stmt)
        con.execute(f"SET file_search_path = '{self.home}'")
        return con

    def sql(self, query: str) -> pa.Table:
        with self.connect() as con:
            return con.sql(query).to_arrow_table()

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
