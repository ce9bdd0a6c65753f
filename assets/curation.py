"""The curation loop: promotion of evaluated models, pseudo-labels by the production model, and
the review queue. Thin calls into models.registry, labeling.curation.pseudo and labeling.curation.review (the same
functions `ferlab models`, `ferlab pseudo-label` and `ferlab review-queue` use)."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.automation import FOLLOW_UPSTREAM, TRAINING_POOL, TRAINING_STEP_TAGS
from assets.config import settings_config
from assets.metadata import report_metadata, table_metadata
from assets.models import GROUP as MODELS_GROUP
from assets.partitions import dataset_versions
from assets.resources import WarehouseResource
from labeling.curation.pseudo import pseudo_label
from labeling.curation.review import REASONS, build_review_queue, queue_table
from labeling.curation.settings import PseudoLabelSettings, ReviewSettings
from models.pipeline import latest_model_id
from models.registry import decide_promotion, production_model

GROUP = "curation"
PseudoLabelConfig = settings_config(PseudoLabelSettings, "PseudoLabelConfig")
ReviewQueueConfig = settings_config(ReviewSettings, "ReviewQueueConfig")


def _promotion_asset(task: str):
    @asset(
        name=f"{task}_promotion",
        group_name=MODELS_GROUP,
        deps=[f"{task}_eval_report"],
        partitions_def=dataset_versions,
        kinds={"duckdb"},
        automation_condition=FOLLOW_UPSTREAM,
        pool=TRAINING_POOL,  # may train the production model's settings on this version
        op_tags=TRAINING_STEP_TAGS,
        description=f"Promote the version's latest {task} model if it beats the production model on the same "
        "held-out evaluation; the decision and both figures go to `model_promotions`.",
    )
    def _promotion(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        wh = warehouse.get()
        d = decide_promotion(wh, latest_model_id(wh, task, context.partition_key))
        return MaterializeResult(
            metadata={
                "model_id": MetadataValue.text(d.model_id),
                "promoted": MetadataValue.bool(d.promoted),
                d.metric: MetadataValue.float(d.value),
                f"production_{d.metric}": MetadataValue.float(d.production_value)
                if d.production_value is not None
                else MetadataValue.text("none"),
                "production_model_before": MetadataValue.text(d.production_model_id or "none"),
                "production_model_now": MetadataValue.text(production_model(wh, task) or "none"),
                "reason": MetadataValue.text(d.reason),
            }
        )

    return _promotion


au_promotion = _promotion_asset("au")
emotion_promotion = _promotion_asset("emotion")


def _pseudo_asset(task: str):
    @asset(
        name=f"{task}_pseudo_labels",
        group_name=GROUP,
        deps=[f"{task}_promotion"],
        kinds={"onnx", "parquet"},
        automation_condition=FOLLOW_UPSTREAM,  # a promotion decision refreshes them (none: adds nothing)
        description=f"{task} pseudo labels by the production model on the latest dataset version's faces "
        "without a human or gold label, where its out-of-fold predictions (or, once curators have answered "
        "enough of a source's faces, those answers) reach the target precision; a source whose precision "
        "is unmeasured gets unverified labels, kept out of dataset versions.",
    )
    def _pseudo(
        context: AssetExecutionContext, warehouse: WarehouseResource, config: PseudoLabelConfig
    ) -> MaterializeResult:
        wh = warehouse.get()
        r = pseudo_label(wh, task, config.settings())
        return MaterializeResult(
            metadata={
                **report_metadata(r.report["markdown"], wh.home),
                "model_id": MetadataValue.text(r.model_id),
                "dataset_version": MetadataValue.text(r.dataset_version),
                "faces": MetadataValue.int(r.faces),
                "labeled_faces": MetadataValue.int(r.labeled_faces),
                "dagster/row_count": MetadataValue.int(r.rows),
                "rows_added": MetadataValue.int(r.added),
                "rows_updated": MetadataValue.int(r.updated),
                "unreadable_crops": MetadataValue.int(r.skipped),
                "labels_per_class": MetadataValue.json(r.per_label),
                "thresholds": MetadataValue.json(r.thresholds_json()),
                "no_pseudo_labels_target_not_met": MetadataValue.json(r.unmet),
                "calibration_per_source": MetadataValue.json(r.per_source),
                "unverified_sources": MetadataValue.json(r.unverified),
                "settings": MetadataValue.path(str(r.folder / "settings.json")),
            }
        )

    return _pseudo


au_pseudo_labels = _pseudo_asset("au")
emotion_pseudo_labels = _pseudo_asset("emotion")


@asset(
    group_name=GROUP,
    deps=[au_pseudo_labels, emotion_pseudo_labels],
    kinds={"parquet"},
    automation_condition=FOLLOW_UPSTREAM,
)
def review_queue(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: ReviewQueueConfig
) -> MaterializeResult:
    """Faces for curators, per task with a production model: unsure between the pseudo-label
    thresholds, weak label against the model, low detection score, likely label mistakes, most unique."""
    wh = warehouse.get()
    settings = config.settings()
    metadata = {}
    total = 0
    tasks = [settings.model_id.split("-", 1)[0]] if settings.model_id else ["au", "emotion"]
    for task in tasks:
        if settings.model_id is None and production_model(wh, task) is None:
            metadata[f"{task}_skipped"] = MetadataValue.text("no production model")
            continue
        r = build_review_queue(wh, task, settings)
        total += sum(r.by_reason.values())
        metadata[f"{task}_queue"] = MetadataValue.text(r.queue)
        metadata[f"{task}_by_reason"] = MetadataValue.json({k: r.by_reason[k] for k in REASONS})
        metadata[f"{task}_preview"] = table_metadata(queue_table(wh, r.queue, limit=20), max_rows=20)
        # one report per task: its keys get the task's prefix, as the other keys here
        metadata.update({f"{task}_{k}": v for k, v in report_metadata(r.report["markdown"], wh.home).items()})
    metadata["dagster/row_count"] = MetadataValue.int(total)
    return MaterializeResult(metadata=metadata)
