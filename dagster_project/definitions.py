"""Wiring only: every definition lives in its own module."""

from dagster import Definitions

from assets.autolabel import autolabel_assets, autolabel_checks, review_assets
from assets.face_detector import face_detector_assets, face_detector_checks
from assets.ingest import ingest_assets, ingest_checks
from assets.models import model_assets, model_checks
from assets.resources import DetectorResource, SourcesResource, WarehouseResource
from dagster_project.jobs import face_detector_job, ingest_jobs, model_jobs, review_job
from dagster_project.schedules import schedules
from dagster_project.sensors import ingest_sensors, training_sensors

defs = Definitions(
    assets=[*ingest_assets, *autolabel_assets, *review_assets, *face_detector_assets, *model_assets],
    asset_checks=[*ingest_checks, *autolabel_checks, *face_detector_checks, *model_checks],
    jobs=[*ingest_jobs, review_job, face_detector_job, *model_jobs],
    schedules=schedules,
    sensors=[*ingest_sensors, *training_sensors],
    resources={
        "warehouse": WarehouseResource(),
        "sources": SourcesResource(),
        "detector": DetectorResource(),
    },
)
