"""Video analysis of ingested data: a DISFA subject's video through `ferlab analyze`, scored frame
by frame against its gold AU labels. A thin call into labeling.analysis.gold; launched by hand
(`disfa_analysis_job`), never by automation."""

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.config import settings_config
from assets.ingest import disfa_frames
from assets.metadata import report_metadata, table_metadata
from assets.partitions import disfa_subjects
from assets.resources import WarehouseResource
from labeling.analysis.gold import analyze_disfa_subject
from labeling.analysis.settings import AnalyzeSettings

GROUP = "analysis"

DisfaAnalysisConfig = settings_config(
    AnalyzeSettings,
    "DisfaAnalysisConfig",
    camera=(str, Field("left", description="which camera's video of the subject: left | right")),
)


@asset(
    group_name=GROUP,
    partitions_def=disfa_subjects,
    # The production models: whichever a promotion decision (of any dataset version) made production.
    deps=[
        disfa_frames,
        "face_detector",
        AssetDep("au_promotion", partition_mapping=AllPartitionMapping()),
        AssetDep("emotion_promotion", partition_mapping=AllPartitionMapping()),
    ],
    kinds={"onnx", "parquet", "markdown"},
    description="One DISFA subject's video analyzed as `ferlab analyze` does (production detector and "
    "models), one face per frame joined to the subject's gold AU labels: the table and a report (per-AU "
    "precision / recall / F1 of the presence, frames without a face, probability vs gold intensity) "
    "under <home>/analysis/disfa/<subject>/.",
)
def disfa_analysis(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: DisfaAnalysisConfig
) -> MaterializeResult:
    r = analyze_disfa_subject(
        warehouse.get(),
        context.partition_key,
        config.settings(),  # type: ignore[arg-type]
        camera=config.camera,  # type: ignore[attr-defined]
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(r.table.num_rows),
            "f1": MetadataValue.json(r.f1),
            "avg_f1": MetadataValue.float(round(r.avg_f1, 4)),
            "frames": MetadataValue.int(r.frames),
            "frames_with_face": MetadataValue.int(r.frames_with_face),
            "missed_gold_frames": MetadataValue.int(r.missed_gold_frames),
            "gold_not_analyzed": MetadataValue.int(r.gold_not_analyzed),
            "au_model": MetadataValue.text(r.analysis.au_model),
            "subject_in_au_model": MetadataValue.text(r.subject_in_au_model),
            "emotion_model": MetadataValue.text(r.analysis.emotion_model),
            "table": MetadataValue.path(str(r.path)),
            "preview": table_metadata(r.table),
            **report_metadata(r.report["markdown"], warehouse.root()),
        }
    )
