"""Ingestion assets: one per source kind, each a thin call into warehouse.sources, with its
asset checks beside it."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Backoff,
    Failure,
    MaterializeResult,
    RetryPolicy,
    asset,
    asset_check,
)

from assets.metadata import ingest_metadata
from assets.partitions import disfa_subjects, scraped_batches
from assets.resources import SourcesResource, WarehouseResource
from warehouse.schemas import AU_PRESENT_THRESHOLD, DISFA_AUS, EMOTIONS
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped
from warehouse.store import quote_literal as sql_literal

GROUP = "ingest"
# Transient errors (a source share that hiccups, a busy disk) get the step retried; ingestion is
# keyed and idempotent, so a retry adds only what the failed attempt did not. Errors that no retry
# can fix raise Failure(allow_retries=False). A crashed run worker is retried as a run (the
# `dagster/max_retries` tag of the ingest jobs and `run_retries` in dagster.yaml).
INGEST_RETRY = RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL)


@asset(group_name=GROUP, kinds={"parquet", "duckdb"}, retry_policy=INGEST_RETRY)
def fer2013_images(
    context: AssetExecutionContext, warehouse: WarehouseResource, sources: SourcesResource
) -> MaterializeResult:
    """FER-2013 (Kaggle fer2013.csv): 48x48 gray faces as PNG, gold emotion labels, split from
    Usage. Malformed rows go to `rejects`."""
    wh = warehouse.get()
    csv = sources.fer2013()
    if not csv.is_file():
        raise Failure(
            f"FER-2013 CSV not found at {csv}: set sources.fer2013_csv or $FERLAB_FER2013_CSV",
            allow_retries=False,
        )
    report = ingest_fer2013(wh, csv, show_progress=False)
    context.log.info(report.summary())
    return MaterializeResult(metadata=ingest_metadata(wh, report, "source = 'fer2013'"))


@asset(
    group_name=GROUP, partitions_def=disfa_subjects, kinds={"parquet", "opencv"}, retry_policy=INGEST_RETRY
)
def disfa_frames(
    context: AssetExecutionContext, warehouse: WarehouseResource, sources: SourcesResource
) -> MaterializeResult:
    """One DISFA subject: video frames (JPEG, every `stride`-th) with their 12 AU intensities;
    present = intensity >= 2. Unreadable videos, missing or bad label files go to `rejects`."""
    wh = warehouse.get()
    subject = context.partition_key
    report = ingest_disfa(
        wh, sources.disfa(), subjects=[subject], stride=sources.disfa_stride, show_progress=False
    )
    context.log.info(report.summary())
    return MaterializeResult(
        metadata=ingest_metadata(wh, report, f"source = 'disfa' AND subject = {sql_literal(subject)}")
    )


@asset(
    group_name=GROUP, partitions_def=scraped_batches, kinds={"parquet", "pillow"}, retry_policy=INGEST_RETRY
)
def scraped_images(
    context: AssetExecutionContext, warehouse: WarehouseResource, sources: SourcesResource
) -> MaterializeResult:
    """One drop batch of scraped images; a sub-folder named after an emotion gives a weak label.
    Exact duplicates are stored once, near-duplicates reported, broken files rejected."""
    wh = warehouse.get()
    batch = context.partition_key
    report = ingest_scraped(wh, sources.scraped() / batch, batch=batch, show_progress=False)
    context.log.info(report.summary())
    return MaterializeResult(
        metadata=ingest_metadata(wh, report, f"source = 'scraped' AND batch = {sql_literal(batch)}")
    )


# ---- checks -------------------------------------------------------------------------------
def _source_checks(asset_def: AssetsDefinition, source: str) -> list:
    """The checks every ingestion asset gets, over its source's rows."""
    key: AssetKey = asset_def.key
    where = f"source = {sql_literal(source)}"

    @asset_check(asset=key, name="schema_matches_contract", blocking=True)
    def schema_matches_contract(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        problems = warehouse.get().schema_mismatches()
        return AssetCheckResult(passed=not problems, metadata={"problems": problems or "none"})

    @asset_check(asset=key, name="has_images", blocking=True)
    def has_images(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        n = warehouse.get().sql(f"SELECT count(*) AS n FROM images WHERE {where}").column("n")[0].as_py()
        return AssetCheckResult(passed=n > 0, metadata={"images": n})

    @asset_check(asset=key, name="no_duplicate_ids", blocking=True)
    def no_duplicate_ids(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        dup = warehouse.get().sql(
            "SELECT 'images' AS t, count(*) - count(DISTINCT image_id) AS n FROM images UNION ALL "
            "SELECT 'emotion_labels', count(*) - count(DISTINCT (image_id, crop_id, label_source, annotator)) "
            "FROM emotion_labels UNION ALL "
            "SELECT 'au_labels', count(*) - count(DISTINCT (image_id, crop_id, au, label_source, annotator)) "
            "FROM au_labels UNION ALL SELECT 'rejects', count(*) - count(DISTINCT reject_id) FROM rejects"
        )
        counts = dict(zip(dup.column("t").to_pylist(), dup.column("n").to_pylist(), strict=True))
        return AssetCheckResult(passed=not any(counts.values()), metadata={"duplicates": counts})

    @asset_check(asset=key, name="labels_in_range", blocking=True)
    def labels_in_range(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        emotions = ", ".join(sql_literal(e) for e in EMOTIONS)
        aus = ", ".join(str(a) for a in DISFA_AUS)
        bad = (
            warehouse.get()
            .sql(
                f"SELECT (SELECT count(*) FROM emotion_labels e JOIN images i USING (image_id) "
                f"  WHERE {where} AND e.emotion NOT IN ({emotions})) AS bad_emotion, "
                f"(SELECT count(*) FROM au_labels a JOIN images i USING (image_id) WHERE {where} AND "
                f"  a.label_source = 'gold' AND (a.au NOT IN ({aus}) OR a.intensity < 0 OR a.intensity > 5 "
                f"  OR a.present <> (a.intensity >= {AU_PRESENT_THRESHOLD}))) AS bad_au"
            )
            .to_pylist()[0]
        )
        return AssetCheckResult(passed=not any(bad.values()), metadata=bad)

    return [schema_matches_contract, has_images, no_duplicate_ids, labels_in_range]


fer2013_checks = _source_checks(fer2013_images, "fer2013")
disfa_checks = _source_checks(disfa_frames, "disfa")
scraped_checks = _source_checks(scraped_images, "scraped")
