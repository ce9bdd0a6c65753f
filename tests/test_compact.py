"""Seed 004's compact models (models.compact): the int8 ONNX and the distilled alpha-0.25 student of
a trained emotion model load, run, and agree with the fp32 model on the same held-out faces (the
small demo's FER-2013 test split). Test budget: MobileNetV2 (packaged weights) at 64 px, head only
(one fine-tuning epoch at this size and batch leaves a model worse than its head, with
near-uniform probabilities whose argmax any rounding flips); the student 2 epochs instead of
seed 004's 12."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferlab import cli
from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from models.compact import (
    INT8_FILE,
    DistillationSettings,
    compare_compact,
    distill,
    quantize_int8,
)
from models.pipeline import evaluate_model, load_run, train_model
from models.predict import Predictor
from models.settings import EmotionTrainingSettings
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.versions import snapshot_dataset_version

TEACHER = EmotionTrainingSettings(
    image_size=64, head_epochs=10, finetune_epochs=0, batch_size=32, device="cpu", class_weight_mu=None
)
STUDENT = DistillationSettings(epochs=2, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fer2013_root) -> tuple[Path, str]:
    root = fer2013_root.copy(tmp_path_factory.mktemp("compact") / "home")
    wh = Warehouse(root)
    run = train_model(wh, fer2013_root.version, TEACHER)
    quantize_int8(wh, run.model_id)
    distill(wh, run.model_id, STUDENT)
    return root, run.model_id


@pytest.fixture(scope="module")
def comparison(trained):
    root, model_id = trained
    return compare_compact(Warehouse(root), model_id, repeats=5)


@pytest.mark.slow
def test_int8_loads_runs_and_its_metric_is_within_002_of_fp32(trained, comparison):
    root, model_id = trained
    wh = Warehouse(root)
    run = load_run(wh, model_id)
    assert (run.directory / INT8_FILE).is_file()
    fp32, int8 = comparison.row("fp32"), comparison.row("int8")
    print(f"\nheld-out faces: {comparison.n_faces} ({comparison.held_out})")
    for r in comparison.rows:
        print(f"  {r}")
    assert fp32["metric"] == int8["metric"] == "accuracy"
    assert abs(int8["value"] - fp32["value"]) <= 0.02
    assert int8["size_mb"] < fp32["size_mb"] / 2
    assert int8["agreement"] >= 0.9
    # the predictor loads the int8 file and predicts probabilities
    crops = wh.sql("SELECT media_path FROM crops ORDER BY crop_id LIMIT 8").column("media_path").to_pylist()
    predictor = Predictor.load(wh, model_id, variant="int8")
    prob = predictor.predict(crops)
    assert prob.shape == (8, len(predictor.labels)) and np.allclose(prob.sum(1), 1, atol=1e-3)
    with pytest.raises(ConfigError):
        Predictor.load(wh, model_id, backend="torch", variant="int8")
    report = (comparison.directory / "report.md").read_text()
    assert "int8" in report and "student" in report
    # the model's own report has the table, and keeps it when the model is evaluated again
    own = wh.home / "reports" / run.dataset_version / model_id / "report.md"
    for _ in range(2):
        text = own.read_text()
        section = text[text.index("## Compact models") :]
        assert "| int8 | model.int8.onnx |" in section and "| student | student.onnx |" in section
        assert f"{int8['size_mb']:.2f}" in section
        evaluate_model(wh, model_id)


@pytest.mark.slow
def test_the_student_loads_and_runs(trained, comparison):
    root, model_id = trained
    wh = Warehouse(root)
    student = comparison.row("student")
    assert student["size_mb"] < comparison.row("fp32")["size_mb"] / 4
    assert 0 <= student["value"] <= 1
    crops = wh.sql("SELECT media_path FROM crops ORDER BY crop_id LIMIT 4").column("media_path").to_pylist()
    for backend in ("onnx", "torch"):
        predictor = Predictor.load(wh, model_id, backend=backend, variant="student")
        assert predictor.config.alpha == 0.25
        prob = predictor.predict(crops)
        assert prob.shape == (4, 7) and np.allclose(prob.sum(1), 1, atol=1e-3)


@pytest.mark.slow
def test_the_commands_export_int8_and_distill(trained, comparison):
    """`ferlab export MODEL_ID --int8` (here the dynamic fallback, asked for) and `ferlab distill`
    write their files and the table; runs last: it replaces the files the tests above read."""
    root, model_id = trained
    home = ["--home", str(root)]
    run = load_run(Warehouse(root), model_id)
    assert cli.main([*home, "export", model_id, "--int8", "--calibration", "dynamic"]) == 0
    assert json.loads((run.directory / "int8.json").read_text())["calibration"] == "dynamic"
    prob = Predictor.load(Warehouse(root), model_id, variant="int8").predict_arrays(
        [np.zeros((64, 64, 3), np.uint8)]
    )
    assert prob.shape == (1, 7)
    assert (
        cli.main([*home, "distill", model_id, "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    )
    info = json.loads((run.directory / "student.json").read_text())
    assert info["settings"]["epochs"] == 1 and len(info["history"]) == 1
    assert (comparison.directory / "report.md").is_file()
    assert cli.main([*home, "export", "not-a-version"]) != 0  # a dataset version still needs --out


@pytest.mark.slow
def test_au_int8_and_student_on_a_folds_held_out_subject(tmp_path, demo_renders):
    """An AU model (3 demo people, 3-fold): int8 and the student are scored on the production fold
    model's own held-out subject, at its validation thresholds (the student at its own)."""
    from models.settings import AUTrainingSettings
    from warehouse.sources.disfa import ingest_disfa

    wh = Warehouse(tmp_path / "home")
    people = ["SN001", "SN002", "SN003"]
    ingest_disfa(
        wh, demo_renders.path("small", seed=0) / "disfa", subjects=people, stride=2, show_progress=False
    )
    autolabel(wh, select_images(wh), load_detector("yunet"), show_progress=False)
    version = snapshot_dataset_version(wh).version
    settings = AUTrainingSettings(image_size=64, head_epochs=10, finetune_epochs=0, device="cpu")
    run = train_model(wh, version, settings)
    quantize_int8(wh, run.model_id)
    distill(wh, run.model_id, STUDENT.replace(epochs=1))
    result = compare_compact(wh, run.model_id, repeats=5)
    print(f"\nheld-out faces: {result.n_faces} ({result.held_out})")
    fold = run.info["final"]["from_fold"]
    held = next(f["test_groups"] for f in run.info["folds"] if f["fold"] == fold)
    assert f"fold {fold}'s held-out groups ({len(held)})" in result.held_out
    fp32, int8, student = (result.row(v) for v in ("fp32", "int8", "student"))
    assert fp32["metric"] == int8["metric"] == student["metric"] == "avg_f1"
    # fp32 on these faces at these thresholds is the fold's own evaluation
    ours = next(p for p in run.folds if p.fold == fold)
    assert result.n_faces == len(ours.y_true)
    assert abs(int8["value"] - fp32["value"]) <= 0.02
    prob = Predictor.load(wh, run.model_id, variant="student").predict_arrays(
        [np.zeros((64, 64, 3), np.uint8)]
    )
    assert prob.shape == (1, len(settings.aus)) and ((prob >= 0) & (prob <= 1)).all()


@pytest.mark.slow
def test_the_compact_asset_through_dagster(trained):
    """`compact_job`'s `emotion_compact` on the version's partition: int8 + a 1-epoch student of the
    latest emotion model, the table in the metadata."""
    from dagster import AssetKey, DagsterInstance

    from dagster_project.definitions import defs

    root, model_id = trained
    version = load_run(Warehouse(root), model_id).dataset_version
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("dataset_versions", [version])
    run = defs.resolve_job_def("compact_job").execute_in_process(
        instance=instance,
        partition_key=version,
        asset_selection=[AssetKey("emotion_compact")],
        run_config={
            "resources": {"warehouse": {"config": {"home": str(root)}}},
            "ops": {"emotion_compact": {"config": {"epochs": 1, "batch_size": 32, "device": "cpu"}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
    )
    assert run.success
    meta = run.asset_materializations_for_node("emotion_compact")[0].metadata
    assert meta["model_id"].value == model_id
    assert [r["variant"] for r in meta["table"].value] == ["fp32", "int8", "student"]


def test_only_a_network_with_a_width_multiplier_has_a_student(tmp_path):
    """The seed-003 CNN has no alpha to shrink: `why_no_student` says so (the compact asset then makes
    the int8 model alone, and says why there is no student), a MobileNet has none to give."""
    from models.compact import why_no_student
    from models.pipeline import ModelRun

    def run(architecture: str) -> ModelRun:
        return ModelRun(
            "emotion-x", "emotion", "v-1", tmp_path, tmp_path / "m.pt", tmp_path / "m.onnx", [],
            {"network": {"architecture": architecture}},
        )  # fmt: skip

    assert "fer2013_cnn" in why_no_student(run("fer2013_cnn")) and "width multiplier" in why_no_student(
        run("fer2013_cnn")
    )
    assert why_no_student(run("mobilenet_v2")) is None and why_no_student(run("mobilenet_v1")) is None
