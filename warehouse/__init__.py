"""Storage layer: Parquet tables with explicit schemas, a content-addressed media store and a
DuckDB catalog. No Dagster imports: everything here runs and tests on its own."""

from warehouse.store import Warehouse

__all__ = ["Warehouse"]
