"""Every blocking asset check, seen failing: bad data in the warehouse makes the check fail and
the assets downstream of the checked one do not run in the same run. On FER-2013 (its images
are face crops already, so a run takes seconds); the other sources share the same checks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import (
    DagsterInstance,
    load_asset_checks_from_package_module,
    load_assets_from_package_module,
    materialize,
)

import assets
from assets.resources import DetectorResource, LabelStudioResource, SourcesResource, WarehouseResource
from ferlab.samples.fer2013 import write_fer2013_sample
from warehouse import Warehouse

DEFINITIONS = [*load_assets_from_package_module(assets), *load_asset_checks_from_package_module(assets)]
INGEST = ["fer2013_images", "fer2013_detections", "fer2013_crops"]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _run(home, csv, selection: list[str]):
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            DEFINITIONS,
            selection=selection,
            instance=instance,
            resources={
                "warehouse": WarehouseResource(home=str(home)),
                "sources": SourcesResource(fer2013_csv=str(csv)),
                "detector": DetectorResource(device="cpu"),
                "labelstudio": LabelStudioResource(),  # every asset's resources, used or not
            },
            run_config=QUIET,
            raise_on_error=False,
        )
    checks = {
        (c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()
    }
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    return result, checks, done


@pytest.fixture
def ingested(tmp_path):
    """A data root with a clean FER-2013 ingest, and its CSV."""
    home, csv = tmp_path / "var", tmp_path / "fer2013.csv"
    write_fer2013_sample(csv, rows=20, seed=0)
    result, checks, done = _run(home, csv, INGEST)
    assert result.success and all(checks.values()) and done == set(INGEST), checks
    return home, csv


def _add_raw_part(wh: Warehouse, table: str, rows: pa.Table, name: str) -> None:
    """Rows written straight into a table's folder, as a broken writer would (no key check)."""
    pq.write_table(rows, wh.table_dir(table) / f"part-{name}.parquet")


def test_no_images_stops_auto_labeling(tmp_path):
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n")
    result, checks, done = _run(tmp_path / "var", csv, INGEST)
    assert checks[("fer2013_images", "has_images")] is False
    assert done == {"fer2013_images"} and not result.success


def test_a_part_off_the_contract_stops_auto_labeling(ingested):
    home, csv = ingested
    wh = Warehouse(home)
    rows = wh.sql("SELECT * FROM emotion_labels LIMIT 1")
    retyped = rows.set_column(
        rows.schema.get_field_index("annotator"), "annotator", pa.array([7], pa.int64())
    )  # an outside writer's part: readable by name, wrong in type
    _add_raw_part(wh, "emotion_labels", retyped, "foreign")
    result, checks, done = _run(home, csv, INGEST)
    assert checks[("fer2013_images", "schema_matches_contract")] is False
    assert done == {"fer2013_images"} and not result.success


def test_duplicate_ids_stop_auto_labeling(ingested):
    home, csv = ingested
    wh = Warehouse(home)
    _add_raw_part(wh, "images", wh.sql("SELECT * FROM images LIMIT 1"), "duplicate")
    result, checks, done = _run(home, csv, INGEST)
    assert checks[("fer2013_images", "no_duplicate_ids")] is False
    assert done == {"fer2013_images"} and not result.success


def test_a_label_out_of_range_stops_auto_labeling(ingested):
    home, csv = ingested
    wh = Warehouse(home)
    label = wh.sql("SELECT * FROM emotion_labels LIMIT 1")
    for column, value in (("emotion", "bored"), ("annotator", "a-broken-labeler")):
        label = label.set_column(label.schema.get_field_index(column), column, pa.array([value]))
    wh.append_labels("emotion_labels", label)
    result, checks, done = _run(home, csv, INGEST)
    assert checks[("fer2013_images", "labels_in_range")] is False
    assert done == {"fer2013_images"} and not result.success


def test_a_crop_without_its_detection_stops_the_dataset_version(ingested):
    home, csv = ingested
    wh = Warehouse(home)
    crop = wh.sql("SELECT * FROM crops LIMIT 1")
    for column, value in (("crop_id", "orphan-crop"), ("detection_id", "no-such-detection")):
        crop = crop.set_column(
            crop.schema.get_field_index(column), column, pa.array([value], crop.schema.field(column).type)
        )
    _add_raw_part(wh, "crops", crop, "orphan")
    result, checks, done = _run(home, csv, [*INGEST, "dataset_version"])
    assert checks[("fer2013_crops", "every_crop_has_its_files_and_detection")] is False
    assert "dataset_version" not in done and set(INGEST) <= done and not result.success


@pytest.mark.parametrize("scratch_lr, exploded", [(1e-3, False), (1e20, True)])
def test_a_model_that_blew_up_is_not_evaluated(tmp_path, scratch_lr, exploded):
    """A learning rate that sends the weights to inf/NaN fails the model's blocking export check,
    and its report does not run; the same run at a sane rate reaches the report."""
    home, csv = tmp_path / "var", tmp_path / "fer2013.csv"
    write_fer2013_sample(csv, rows=60, seed=0)
    result, checks, done = _run(home, csv, [*INGEST, "dataset_version"])
    assert result.success, checks
    (version,) = Warehouse(home).sql("SELECT DISTINCT version FROM dataset_versions").column(0).to_pylist()
    train = {"architecture": "fer2013_cnn", "scratch_epochs": 2, "scratch_lr": scratch_lr}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_versions", [version])
        result = materialize(
            DEFINITIONS,
            selection=["emotion_model", "emotion_eval_report"],
            instance=instance,
            partition_key=version,
            resources={
                "warehouse": WarehouseResource(home=str(home)),
                "sources": SourcesResource(fer2013_csv=str(csv)),
                "detector": DetectorResource(device="cpu"),
                "labelstudio": LabelStudioResource(),  # every asset's resources, used or not
            },
            run_config={**QUIET, "ops": {"emotion_model": {"config": train}}},
            raise_on_error=False,
        )
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert checks["emotion_model_finite_and_exports_agree"] is not exploded
    assert result.success is not exploded
    assert done == ({"emotion_model"} if exploded else {"emotion_model", "emotion_eval_report"})
