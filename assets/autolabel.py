"""Auto-labeling assets: per source, face (and person) detections and face crops, partitioned
like the images they come from. Each is a thin call into labeling.detection.autolabel, so a
materialization stores its rows chunk by chunk and skips the images the detector has finished."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
    asset_check,
    multi_asset,
)

from assets.ingest import disfa_frames, fer2013_images, scraped_images
from assets.metadata import table_metadata
from assets.partitions import disfa_subjects, scraped_batches
from assets.resources import DetectorResource, WarehouseResource
from labeling.detection.autolabel import autolabel, select_images
from warehouse import Warehouse
from warehouse.placement import where_running
from warehouse.store import quote_literal as sql_literal

GROUP = "autolabel"
FIFTYONE_DATASET = "ferlab"


def _faces_assets(
    source: str, upstream: AssetsDefinition, partitions: PartitionsDefinition | None, partition_column: str
) -> AssetsDefinition:
    """`<source>_detections` and `<source>_crops` in one step, so each image is decoded once."""

    @multi_asset(
        name=f"{source}_faces",
        specs=[
            AssetSpec(
                f"{source}_detections",
                deps=[upstream],
                group_name=GROUP,
                kinds={"parquet"},
                partitions_def=partitions,
                description=f"Face and person boxes on {source} images.",
            ),
            AssetSpec(
                f"{source}_crops",
                deps=[f"{source}_detections"],
                group_name=GROUP,
                kinds={"parquet"},
                partitions_def=partitions,
                description=f"Face crops of {source} images: 224 RGB + 48 gray, with quality.",
            ),
        ],
        partitions_def=partitions,
    )
    def _assets(context: AssetExecutionContext, warehouse: WarehouseResource, detector: DetectorResource):
        wh = warehouse.get()
        where = f"source = {sql_literal(source)}"
        partition = {partition_column: context.partition_key} if partitions is not None else {}
        if partitions is not None:
            where += f" AND {partition_column} = {sql_literal(context.partition_key)}"
        images = select_images(wh, source=source, **partition)
        settings = detector.settings()
        model = detector.load(wh.home)
        report = autolabel(wh, images, model, settings)
        context.log.info(report.summary())
        # which machine (host, process, dask worker) labeled this partition: several machines
        ran_on = {"ran_on": MetadataValue.json(where_running())}
        yield MaterializeResult(
            asset_key=f"{source}_detections",
            metadata={**_detection_metadata(wh, where, report, model.name), **ran_on},
        )
        yield MaterializeResult(
            asset_key=f"{source}_crops", metadata={**_crop_metadata(wh, where, report), **ran_on}
        )

    return _assets


def _detection_metadata(wh: Warehouse, where: str, report, detector_name: str) -> dict:
    by_label = wh.sql(
        f"SELECT d.label, d.detector, count(*) AS boxes, round(avg(d.score), 3) AS mean_score FROM detections d "
        f"JOIN images i USING (image_id) WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return {
        "dagster/row_count": MetadataValue.int(sum(by_label.column("boxes").to_pylist())),
        "detector": MetadataValue.text(detector_name),
        "images": MetadataValue.int(report.frames),
        "images_without_face": MetadataValue.int(report.frames_without_face),
        # finished earlier by this detector at this margin (a re-run, a resumed run): not read again
        "images_skipped": MetadataValue.int(report.skipped),
        "by_label": table_metadata(by_label),
        "rows_added": MetadataValue.int(report.added.get("detections", 0)),
    }


def _crop_metadata(wh: Warehouse, where: str, report) -> dict:
    stats = wh.sql(
        f"SELECT count(*) AS crops, sum(c.too_small::INT) AS too_small, sum(c.too_blurry::INT) AS too_blurry, "
        f"round(median(c.face_px), 1) AS median_face_px, round(median(c.blur), 1) AS median_blur "
        f"FROM crops c JOIN images i USING (image_id) WHERE {where}"
    )
    preview = wh.sql(
        f"SELECT c.crop_id, i.source_uri, i.frame_index, c.face_px, c.blur, c.brightness, c.media_path "
        f"FROM crops c JOIN images i USING (image_id) WHERE {where} ORDER BY i.source_uri, i.frame_index LIMIT 10"
    )
    row = stats.to_pylist()[0]
    return {
        "dagster/row_count": MetadataValue.int(row["crops"]),
        "quality": table_metadata(stats),
        "preview": table_metadata(preview),
        "rows_added": MetadataValue.int(report.added.get("crops", 0)),
        "rejects": MetadataValue.int(len(report.rejects)),
    }


fer2013_faces = _faces_assets("fer2013", fer2013_images, None, "")
disfa_faces = _faces_assets("disfa", disfa_frames, disfa_subjects, "subject")
scraped_faces = _faces_assets("scraped", scraped_images, scraped_batches, "batch")


def _crop_checks(source: str) -> list:
    where = f"i.source = {sql_literal(source)}"

    @asset_check(asset=f"{source}_crops", name="every_crop_has_its_files_and_detection", blocking=True)
    def crops_complete(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        wh = warehouse.get()
        rows = wh.sql(
            f"SELECT c.media_path, c.gray_media_path, d.detection_id IS NULL AS orphan FROM crops c "
            f"JOIN images i USING (image_id) LEFT JOIN detections d USING (detection_id) WHERE {where}"
        ).to_pylist()
        missing = sum(
            not wh.path(r["media_path"]).is_file() or not wh.path(r["gray_media_path"]).is_file()
            for r in rows
        )
        orphans = sum(r["orphan"] for r in rows)
        return AssetCheckResult(
            passed=missing == 0 and orphans == 0,
            metadata={"crops": len(rows), "missing_files": missing, "without_detection": orphans},
        )

    @asset_check(asset=f"{source}_detections", name="face_detection_rate")
    def face_detection_rate(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        row = (
            warehouse.get()
            .sql(
                f"SELECT count(*) AS images, count(*) FILTER (WHERE EXISTS (SELECT 1 FROM detections d "
                f"WHERE d.image_id = i.image_id AND d.label = 'face')) AS with_face FROM images i WHERE {where}"
            )
            .to_pylist()[0]
        )
        rate = row["with_face"] / row["images"] if row["images"] else 0.0
        # Scraped scenes may hold no face at all; a video of one subject should show it nearly always.
        floor = 0.5 if source == "scraped" else 0.9
        return AssetCheckResult(
            passed=rate >= floor, metadata={**row, "rate": round(rate, 3), "floor": floor}
        )

    return [crops_complete, face_detection_rate]


fer2013_crop_checks = _crop_checks("fer2013")
disfa_crop_checks = _crop_checks("disfa")
scraped_crop_checks = _crop_checks("scraped")


@asset(
    group_name="review",
    deps=["fer2013_crops", "disfa_crops", "scraped_crops"],
    kinds={"fiftyone"},
    description="The persistent FiftyOne dataset curators review: images with detections, face crops as "
    "patches (to_patches('face_crops')), emotion and AU labels. Re-syncing is idempotent.",
)
def fiftyone_dataset(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    from labeling.fiftyone.sync import sync_fiftyone

    report = sync_fiftyone(warehouse.get(), name=FIFTYONE_DATASET)
    context.log.info(str(report))
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(report.total),
            "added": MetadataValue.int(report.added),
            "updated": MetadataValue.int(report.updated),
            "removed": MetadataValue.int(report.removed),
            "dataset": MetadataValue.text(FIFTYONE_DATASET),
            "open_with": MetadataValue.text("ferlab review  (FiftyOne App on 127.0.0.1:5151)"),
        }
    )


class CorrectionsConfig(Config):
    """Which FiftyOne dataset to pull from, and who curated it (annotator fiftyone:<user>)."""

    dataset: str = FIFTYONE_DATASET
    user: str = "curator"


@asset(
    group_name="review",
    deps=[fiftyone_dataset],
    kinds={"fiftyone"},
    description="Curators' work in the FiftyOne dataset, back in the warehouse: edited face emotions "
    "(face_emotions) as human labels, faces tagged `reject` as exclusions the dataset versions honour, "
    "faces tagged `relabel` in the review queue (labeling.fiftyone.corrections). Pulling twice adds nothing.",
)
def fiftyone_corrections(
    context: AssetExecutionContext, config: CorrectionsConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    from labeling.fiftyone.corrections import pull_corrections

    report = pull_corrections(warehouse.get(), config.dataset, user=config.user)
    context.log.info(str(report))
    return MaterializeResult(
        metadata={
            "edits": MetadataValue.int(report.edits),
            "rejects": MetadataValue.int(report.rejects),
            "relabels": MetadataValue.int(report.relabels),
            "exclusions_lifted": MetadataValue.int(report.unrejects),
            "ambiguous_sample_tags": MetadataValue.int(report.ambiguous),
            "invalid_edits": MetadataValue.json(report.invalid[:20]),
            "dataset": MetadataValue.text(config.dataset),
        }
    )
