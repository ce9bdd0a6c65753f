"""The assets' declarative automation, evaluated tick by tick with Dagster's own evaluator on
an instance: what a running automation condition sensor would request. Materializations are
reported as events (training is tested in test_models.py): the conditions read only the
instance's event log and partitions."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, evaluate_automation_conditions

from dagster_project.definitions import defs

MODELS = ("au_model", "emotion_model")
# The reports follow their model, the promotion decisions their report.
REPORTS = ("au_eval_report", "emotion_eval_report", "au_promotion", "emotion_promotion")
CURATION = {name: {None} for name in ("au_pseudo_labels", "emotion_pseudo_labels", "review_queue")}
SATURDAY = dt.datetime(2030, 1, 5, 12, tzinfo=dt.UTC)  # the weekly snapshot's cron: Sundays 03:00


class Ticks:
    """Successive evaluations of every automation condition, one cursor carried between them."""

    def __init__(self, instance: DagsterInstance, start: dt.datetime = SATURDAY):
        self.instance, self.now, self.cursor = instance, start, None

    def __call__(self, minutes: float = 1) -> dict[str, set]:
        """One tick, `minutes` after the previous one: {asset: requested partitions}."""
        self.now += dt.timedelta(minutes=minutes)
        result = evaluate_automation_conditions(
            defs=defs, instance=self.instance, evaluation_time=self.now, cursor=self.cursor
        )
        self.cursor = result.cursor
        requested = {}
        for key in defs.get_repository_def().asset_graph.get_all_asset_keys():
            partitions = result.get_requested_partitions(key)
            if partitions:
                requested[key.to_user_string()] = set(partitions)
        return requested


def _materialized(instance: DagsterInstance, asset: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=partition))


def _new_version(instance: DagsterInstance, version: str) -> None:
    """What the dataset_version asset does for a snapshot with new content."""
    instance.add_dynamic_partitions("dataset_versions", [version])
    _materialized(instance, "dataset_version")


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


def test_a_new_version_gets_its_models_once_and_the_reports_and_promotions_follow(instance):
    tick = Ticks(instance)
    assert tick() == {}  # first evaluation: nothing is new yet
    _new_version(instance, "v1")
    # The models and, in the same run, the reports that follow them.
    assert tick() == {name: {"v1"} for name in (*MODELS, *REPORTS)}
    assert tick() == {}  # requested once: not again while the run goes on, nor if it fails
    for name in (*MODELS, *REPORTS):  # what the requested run materializes
        _materialized(instance, name, "v1")
    # The promotion decisions refresh the pseudo labels, and the review queue follows them.
    assert tick() == {**CURATION}
    assert tick() == {}
    for name in CURATION:
        _materialized(instance, name)
    assert tick() == {}
    # A model trained again by hand (new settings): its report follows, the model is not retrained.
    _materialized(instance, "au_model", "v1")
    # ... and the retrained model is judged against production, in the same run.
    assert tick() == {"au_eval_report": {"v1"}, "au_promotion": {"v1"}}
    _materialized(instance, "au_eval_report", "v1")
    _materialized(instance, "au_promotion", "v1")
    assert tick() == {"au_pseudo_labels": {None}, "review_queue": {None}}
    _materialized(instance, "au_pseudo_labels")
    _materialized(instance, "review_queue")
    assert tick() == {}
    # An unchanged snapshot keeps its id (no new partition): nothing to train.
    _materialized(instance, "dataset_version")
    assert tick() == {}
    _new_version(instance, "v2")
    assert tick() == {name: {"v2"} for name in (*MODELS, *REPORTS)}
    assert tick() == {}


def test_versions_trained_before_the_sensor_started_are_not_trained_again(instance):
    """`make demo` then `make dev`: the demo's version, its models and reports are in the
    instance before the first tick; nothing is requested, however often it ticks."""
    _new_version(instance, "v-demo")
    for name in (*MODELS, *REPORTS):
        _materialized(instance, name, "v-demo")
    tick = Ticks(instance)
    for _ in range(3):
        assert tick() == {}
    assert instance.get_latest_materialization_event(AssetKey("dataset_version")) is not None


def test_the_weekly_snapshot_runs_once_each_sunday_at_three(instance):
    tick = Ticks(instance)
    assert tick() == {}  # Saturday noon
    assert tick(minutes=14 * 60) == {}  # Sunday 02:01
    assert tick(minutes=60) == {"dataset_version": {None}}  # Sunday 03:01
    assert tick() == {}
    assert tick(minutes=6 * 24 * 60) == {}  # Saturday 03:02
    assert tick(minutes=24 * 60) == {"dataset_version": {None}}  # the next Sunday 03:02


def test_training_job_trains_the_models_and_what_follows_them_not_the_launched_by_hand_assets():
    """A new version's training runs train, report and promote; a student (au_compact /
    emotion_compact), a search or a video analysis is a run a user launches."""
    from dagster_project.definitions import defs

    def assets(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}

    assert assets("training_job") == {
        "au_model",
        "emotion_model",
        "au_eval_report",
        "emotion_eval_report",
        "au_promotion",
        "emotion_promotion",
    }
    assert assets("compact_job") == {"au_compact", "emotion_compact"}
    assert assets("disfa_analysis_job") == {"disfa_analysis"}
