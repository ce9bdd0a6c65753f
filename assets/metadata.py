"""Dagster metadata built from warehouse queries: counts, a preview table, distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from models.evaluation import per_label
from models.tasks import Task
from warehouse import Warehouse
from warehouse.placement import where_running
from warehouse.reports import report_url, served_markdown
from warehouse.sources.common import IngestReport

PREVIEW_COLUMNS = (
    "image_id",
    "source_uri",
    "subject",
    "frame_index",
    "split",
    "width",
    "height",
    "media_path",
)


def report_metadata(markdown: str | Path, home: str | Path) -> dict[str, MetadataValue]:
    """A Markdown report under the data root `home` as asset metadata: its path from the root, its
    HTML beside it as a link to the reports server (`ferlab dev`), and its text shown in the UI,
    plots included (their links point at the reports server), cut to what the UI keeps; a report
    of a dataset version also links the version's index of reports."""
    markdown = Path(markdown)
    relative = PurePosixPath(markdown.resolve().relative_to(Path(home).resolve()).as_posix())
    html = markdown.with_suffix(".html")
    # reports/<version>/<report>/report.md: the version's index page lists its other reports
    index = (
        relative.parents[1] / "index.html"
        if relative.parts[0] == "reports" and len(relative.parts) > 3
        else None
    )
    return {
        "report": MetadataValue.path(str(relative)),
        **(
            {"report_html": MetadataValue.url(report_url(relative.with_suffix(".html")))}
            if html.is_file()
            else {}
        ),
        **(
            {"version_reports": MetadataValue.url(report_url(index))}
            if index and (Path(home) / index).is_file()
            else {}
        ),
        "summary": MetadataValue.md(served_markdown(markdown.read_text(), relative.parent)[:20000]),
    }


def table_metadata(table: pa.Table, max_rows: int = 10) -> MetadataValue:
    """A pyarrow table as a Dagster table (shown as a grid in the UI)."""
    head = table.slice(0, max_rows)
    columns = [TableColumn(name, _column_type(head.schema.field(name).type)) for name in head.column_names]
    records = [TableRecord({k: _plain(v) for k, v in row.items()}) for row in head.to_pylist()]
    return MetadataValue.table(records, schema=TableSchema(columns=columns))


def _column_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return "string"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def ingest_metadata(wh: Warehouse, report: IngestReport, where: str) -> dict[str, Any]:
    """Metadata for an ingestion asset: `where` selects this source's (or partition's) images."""
    with wh.connect() as con:
        total = con.execute(f"SELECT count(*) FROM images WHERE {where}").fetchall()[0][0]
        preview = con.sql(
            f"SELECT {', '.join(PREVIEW_COLUMNS)} FROM images WHERE {where} ORDER BY source_uri LIMIT 10"
        ).to_arrow_table()
        emotions = con.sql(
            f"SELECT e.emotion, count(*) AS images FROM emotion_labels e JOIN images i USING (image_id) "
            f"WHERE {where} GROUP BY 1 ORDER BY 1"
        ).to_arrow_table()
        aus = con.sql(
            f"SELECT a.au, count(*) AS frames, sum(a.present::INT) AS present, round(avg(a.intensity), 3) "
            f"AS mean_intensity FROM au_labels a JOIN images i USING (image_id) WHERE {where} GROUP BY 1 ORDER BY 1"
        ).to_arrow_table()
    reasons: dict[str, int] = {}
    for r in report.rejects:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    metadata: dict[str, Any] = {
        "dagster/row_count": MetadataValue.int(total),
        "images_found": MetadataValue.int(report.images_found),
        "rows_added": MetadataValue.json(report.added),
        "labels_updated": MetadataValue.int(sum(report.updated.values())),
        "rejects": MetadataValue.int(len(report.rejects)),
        "rejects_by_reason": MetadataValue.json(reasons),
        "preview": table_metadata(preview),
        "data_root": MetadataValue.path(str(wh.home)),
        "ran_on": MetadataValue.json(where_running()),  # host, process, dask worker
    }
    if emotions.num_rows:
        metadata["emotion_distribution"] = table_metadata(emotions, max_rows=20)
    if aus.num_rows:
        metadata["au_distribution"] = table_metadata(aus, max_rows=20)
    if report.rejects:
        metadata["rejects_preview"] = table_metadata(
            pa.table(
                {
                    "reason": [r.reason for r in report.rejects],
                    "source_uri": [r.source_uri for r in report.rejects],
                    "line": [r.line for r in report.rejects],
                    "detail": [r.detail for r in report.rejects],
                }
            )
        )
    return metadata


def per_label_metadata(task: Task, metrics: Sequence[Mapping[str, Any]]) -> MetadataValue:
    """The over-all-folds figures of each label as a Dagster table: one row per label in the
    model's order (AU1, AU2, AU4, ...), the task's columns (`Task.per_label_columns`)."""
    figures = per_label(metrics, [m for m, _ in task.per_label_columns])
    table = pa.table(
        {
            "label": pa.array(list(figures), pa.string()),
            **{
                name: pa.array([round(v[m], 3) if m in v else None for v in figures.values()], pa.float64())
                for m, name in task.per_label_columns
            },
        }
    )
    return table_metadata(table, max_rows=table.num_rows)
