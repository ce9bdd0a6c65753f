"""Sensors: events outside Dagster (new DISFA subjects, new scraped batches) become partitions
and get a run; the automation condition sensor runs what the assets' automation conditions ask
for (a new dataset version's models and reports, the weekly snapshot)."""

import os
from collections.abc import Callable
from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.labelstudio import label_studio_annotations
from assets.partitions import disfa_subjects, scraped_batches
from assets.resources import LabelStudioResource, SourcesResource
from dagster_project.jobs import disfa_ingest_job, scraped_ingest_job
from warehouse.errors import ConfigError
from warehouse.sources.disfa import find_disfa_subjects
from warehouse.sources.scraped import find_scraped_batches

INTERVAL_ENV = "FERLAB_SENSOR_INTERVAL_S"


def sensor_interval(default: int) -> int:
    """Seconds between a sensor's evaluations: `$FERLAB_SENSOR_INTERVAL_S` for every sensor when set
    (a site polling faster or slower), else `default`."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{INTERVAL_ENV}={value!r}: give a whole number of seconds, 1 or more")
    return int(value)


def partition_discovery_sensor(
    name: str,
    job: object,  # an asset job from define_asset_job
    partitions: DynamicPartitionsDefinition,
    root_of: Callable[[SourcesResource], Path],
    find: Callable[[Path], list[str]],
    what: str,
) -> SensorDefinition:
    """A sensor that adds a partition per new item `find` lists under the source root and
    requests one run for each (the run key keeps a partition from being requested twice)."""

    @sensor(
        name=name,
        job=job,
        minimum_interval_seconds=sensor_interval(30),
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Adds a `{partitions.name}` partition and requests its ingestion for each new {what}.",
    )
    def _sensor(context: SensorEvaluationContext, sources: SourcesResource) -> SensorResult | SkipReason:
        root = root_of(sources)
        if not root.is_dir():
            return SkipReason(f"no folder at {root}")
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [key for key in find(root) if key not in known]
        if not new:
            return SkipReason(f"no new {what} in {root}")
        return SensorResult(
            run_requests=[RunRequest(run_key=f"{partitions.name}:{key}", partition_key=key) for key in new],
            dynamic_partitions_requests=[partitions.build_add_request(new)],
        )

    return _sensor


disfa_subject_sensor = partition_discovery_sensor(
    "disfa_subject_sensor",
    disfa_ingest_job,
    disfa_subjects,
    SourcesResource.disfa,
    find_disfa_subjects,
    "DISFA subject",
)
scraped_batch_sensor = partition_discovery_sensor(
    "scraped_batch_sensor",
    scraped_ingest_job,
    scraped_batches,
    SourcesResource.scraped,
    find_scraped_batches,
    "scraped batch folder",
)

# Running by default, so `make dev` follows the assets' automation conditions with no clicks.
automation_sensor = AutomationConditionSensorDefinition(
    "automation_condition_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval(30),
    description="Evaluates the assets' automation conditions: each new dataset version's models trained "
    "once and their reports; the weekly dataset version snapshot.",
)


@sensor(
    name="label_studio_sensor",
    asset_selection=[label_studio_annotations],
    minimum_interval_seconds=sensor_interval(60),
    default_status=DefaultSensorStatus.RUNNING,
    description="Polls the Label Studio face project (annotation counts and its newest task update: two "
    "small requests) and requests `label_studio_annotations` when they changed.",
)
def label_studio_sensor(
    context: SensorEvaluationContext, labelstudio: LabelStudioResource
) -> RunRequest | SkipReason:
    from labeling.labelstudio.sync import LabelStudioError
    from warehouse.errors import ConfigError

    try:
        client = labelstudio.client()
        project_id = client.find_project(labelstudio.project_title)
        if project_id is None:
            return SkipReason(f"no Label Studio project {labelstudio.project_title!r} yet")
        signature = f"{project_id}:{client.project_signature(project_id)}"
    except (LabelStudioError, ConfigError) as exc:
        return SkipReason(str(exc))  # a server that is down is not a sensor error: retried next tick
    if signature == context.cursor:
        return SkipReason("no new or updated annotations")
    context.update_cursor(signature)
    return RunRequest(run_key=f"label_studio:{signature}")


sensors = [disfa_subject_sensor, scraped_batch_sensor, automation_sensor, label_studio_sensor]
