"""Label Studio: queued faces go out as tasks with both production models' calls pre-filled and
their probabilities shown, curators' annotations come back as `human` labels. Thin calls into labeling.labelstudio.sync; the sensor that
polls for new annotations is in dagster_project.sensors."""

from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.resources import LabelStudioResource, WarehouseResource

# The Label Studio modules load when an asset runs, not with the definitions. No `from __future__
# import annotations` here: Dagster reads the assets' config annotations as types.
if TYPE_CHECKING:
    from labeling.labelstudio.agreement import AgreementReport
    from labeling.labelstudio.sync import PullReport, PushReport
    from warehouse import Warehouse

GROUP = "labeling"


class LabelStudioPushConfig(Config):
    queue: str = Field("", description="only this review_queue queue (empty: every queued face)")
    predictions: bool = Field(
        True,
        description="pre-fill each task with the emotion and AU production models' calls and show their "
        "probabilities (false: neither)",
    )
    overlap: int = Field(
        0, description="give each task to this many annotators (0: as the project has it, a new project 1)"
    )


class LabelStudioPullConfig(Config):
    consensus: str = Field(
        "majority",
        description="when several annotators answered a face: `majority` (more than half give one value) or "
        "`unanimous` (all do); a face without it gets no human label from them and is queued for review",
    )


@asset(
    group_name=GROUP,
    kinds={"labelstudio"},
    deps=["review_queue"],
    description="Every face of the `review_queue` table as a task of the Label Studio face project (an "
    "emotion, the AUs present), whichever queue queued it: its queues, reasons, priority, weak label and "
    "source as Data Manager columns; both production models' calls pre-filled and every label's probability "
    "and call in the labeling view, the uncertain ones marked as asked (labeling.labelstudio.sync.queue_views); "
    "a face with a task on the server is not pushed again, one whose task was deleted there is. Rows: "
    "`label_studio_tasks`.",
)
def label_studio_tasks(
    context: AssetExecutionContext,
    config: LabelStudioPushConfig,
    warehouse: WarehouseResource,
    labelstudio: LabelStudioResource,
) -> MaterializeResult:
    from labeling.labelstudio.sync import push_faces, queue_views, queued_faces

    wh = warehouse.get()
    rows = queued_faces(wh, config.queue or None)
    views = queue_views(wh, rows) if config.predictions else {}
    report = push_faces(
        wh,
        rows,
        views,
        client=labelstudio.client(),
        title=labelstudio.project_title,
        overlap=config.overlap or None,
    )
    context.log.info(report.summary())
    return MaterializeResult(metadata=push_metadata(wh, len(rows), report))


def push_metadata(wh: "Warehouse", queued: int, report: "PushReport") -> dict[str, MetadataValue]:
    """What a push shows in the UI (the asset's, and `ferlab labelstudio push`'s recorded run)."""
    total = wh.sql("SELECT count(*) AS n FROM label_studio_tasks WHERE project_id = ?", [report.project_id])
    return {
        "project_id": MetadataValue.int(report.project_id),
        "faces_queued": MetadataValue.int(queued),
        "tasks_pushed": MetadataValue.int(report.pushed),
        "with_prediction": MetadataValue.int(report.with_prediction),
        "already_pushed": MetadataValue.int(report.already),
        "pushed_again": MetadataValue.int(report.repushed),
        "tasks_total": MetadataValue.int(int(total.column("n")[0].as_py())),
    }


@asset(
    group_name=GROUP,
    kinds={"labelstudio"},
    deps=[label_studio_tasks],
    description="The face project's submitted annotations as `human` emotion and AU labels of their faces "
    "(annotator labelstudio:<user id>; AUs only when the curator answered them: ticked AUs present, the "
    "others absent). An annotation outside the project's label config is a reject (source labelstudio), no "
    "label. An updated annotation supersedes the earlier labels; skipped tasks add nothing; requested by "
    "`label_studio_sensor` when the project's annotations change. Faces several annotators answered take "
    "their consensus (annotator labelstudio:consensus); those without one are queued for review (reason "
    "disagreement). Metadata: the agreement per AU and emotion (labeling.labelstudio.agreement), also "
    "written to <home>/reports/labelstudio/agreement/.",
)
def label_studio_annotations(
    context: AssetExecutionContext,
    config: LabelStudioPullConfig,
    warehouse: WarehouseResource,
    labelstudio: LabelStudioResource,
) -> MaterializeResult:
    from labeling.labelstudio.agreement import write_report
    from labeling.labelstudio.sync import pull_annotations

    wh = warehouse.get()
    report = pull_annotations(
        wh, client=labelstudio.client(), title=labelstudio.project_title, consensus=config.consensus
    )
    context.log.info(report.summary())
    return MaterializeResult(metadata=pull_metadata(report, write_report(wh, config.consensus)))


def pull_metadata(report: "PullReport", agreement: "AgreementReport") -> dict[str, MetadataValue]:
    """What a pull shows in the UI (the asset's, and `ferlab labelstudio pull`'s recorded run)."""
    consensus = report.consensus
    return {
        "project_id": MetadataValue.int(report.project_id),
        "annotations": MetadataValue.int(report.annotations),
        "skipped": MetadataValue.int(report.skipped),
        "unknown_faces": MetadataValue.int(report.unknown_faces),
        "rejected": MetadataValue.int(report.rejected),
        "emotion_labels_added": MetadataValue.int(report.emotion_added),
        "emotion_labels_updated": MetadataValue.int(report.emotion_updated),
        "au_labels_added": MetadataValue.int(report.au_added),
        "au_labels_updated": MetadataValue.int(report.au_updated),
        "human_emotions": MetadataValue.json(report.emotions),
        "faces_several_annotators": MetadataValue.int(consensus.faces if consensus else 0),
        "faces_in_consensus": MetadataValue.int(consensus.agreed if consensus else 0),
        "faces_in_disagreement": MetadataValue.int(consensus.disagreements if consensus else 0),
        "agreement": MetadataValue.md("\n".join(agreement.lines())),
        "agreement_by_item": MetadataValue.json({r.item: r.as_dict() for r in agreement.rows}),
        "agreement_report": MetadataValue.path(str(agreement.files["markdown"])),
    }
