"""Wiring only: every definition lives in its own module."""

from dagster import Definitions

from assets.autolabel import autolabel_assets, autolabel_checks, review_assets
from assets.ingest import ingest_assets, ingest_checks
from assets.resources import DetectorResource, SourcesResource, WarehouseResource
from dagster_project.jobs import ingest_jobs, review_job
from dagster_project.sensors import ingest_sensors

defs = Definitions(
    assets=[*ingest_assets, *autolabel_assets, *review_assets],
    asset_checks=[*ingest_checks, *autolabel_checks],
    jobs=[*ingest_jobs, review_job],
    sensors=ingest_sensors,
    resources={
        "warehouse": WarehouseResource(),
        "sources": SourcesResource(),
        "detector": DetectorResource(),
    },
)
