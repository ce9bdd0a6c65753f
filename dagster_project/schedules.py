"""Scheduled retraining: a weekly snapshot of the warehouse as a dataset version. A new version
(new crops, labels or curators' corrections changed its content hash) is then trained and
evaluated by `dataset_version_sensor`; an unchanged snapshot keeps its id and trains nothing."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from dagster_project.jobs import dataset_version_job

retraining_schedule = ScheduleDefinition(
    name="weekly_dataset_version",
    job=dataset_version_job,
    cron_schedule="0 3 * * 0",  # Sundays 03:00, when no one is curating
    default_status=DefaultScheduleStatus.STOPPED,  # turn on in the UI once the sources are in place
    description="Snapshot the current crops + labels as a dataset version (retraining follows via the sensor).",
)

schedules = [retraining_schedule]
