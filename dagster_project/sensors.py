"""Sensors: new DISFA subjects and new scraped batches become partitions and get a run."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.partitions import disfa_subjects, scraped_batches
from assets.resources import SourcesResource
from dagster_project.jobs import disfa_ingest_job, scraped_ingest_job
from warehouse.sources.disfa import find_disfa_subjects
from warehouse.sources.scraped import find_scraped_batches


def _new_partitions(context: SensorEvaluationContext, name: str, found: list[str]) -> list[str]:
    known = set(context.instance.get_dynamic_partitions(name))
    return [key for key in found if key not in known]


@sensor(job=disfa_ingest_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def disfa_subject_sensor(
    context: SensorEvaluationContext, sources: SourcesResource
) -> SensorResult | SkipReason:
    """Adds a `disfa_subjects` partition (and requests its ingestion) per new subject in the DISFA root."""
    root = sources.disfa()
    if not root.is_dir():
        return SkipReason(f"no DISFA root at {root}")
    new = _new_partitions(context, disfa_subjects.name, find_disfa_subjects(root))
    if not new:
        return SkipReason(f"no new subjects in {root}")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"disfa:{key}", partition_key=key) for key in new],
        dynamic_partitions_requests=[disfa_subjects.build_add_request(new)],
    )


@sensor(job=scraped_ingest_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def scraped_batch_sensor(
    context: SensorEvaluationContext, sources: SourcesResource
) -> SensorResult | SkipReason:
    """Adds a `scraped_batches` partition (and requests its ingestion) per new batch folder in the drop folder."""
    root = sources.scraped()
    if not root.is_dir():
        return SkipReason(f"no scraped drop folder at {root}")
    new = _new_partitions(context, scraped_batches.name, find_scraped_batches(root))
    if not new:
        return SkipReason(f"no new batches in {root}")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"scraped:{key}", partition_key=key) for key in new],
        dynamic_partitions_requests=[scraped_batches.build_add_request(new)],
    )


ingest_sensors = [disfa_subject_sensor, scraped_batch_sensor]
