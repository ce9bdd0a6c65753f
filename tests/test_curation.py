"""The curation loop on the small demo, end to end: models trained on the DISFA people, promoted
only when better, pseudo-labels scored against the renderer's truth on faces no model trained on
(FER-2013 and scraped faces: they carry no AU label), the review queue, the CLI and the Dagster
assets over the same data root."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ferlab.demotruth import score_au_pseudo_labels, truth_faces
from labeling.autolabel import autolabel
from labeling.curation_settings import PseudoLabelSettings, ReviewSettings
from labeling.detectors import load_detector
from labeling.pseudo import pseudo_label
from labeling.review import REASONS, build_review_queue
from models.pipeline import evaluate_model, train_model
from models.predict import Predictor
from models.registry import decide_promotion, production_model
from models.settings import AUTrainingSettings, EmotionTrainingSettings
from warehouse import Warehouse
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped
from warehouse.versions import snapshot_dataset_version

pytestmark = pytest.mark.slow  # trains three models (~3 minutes on 2 CPU cores)

QUIET = lambda m: None  # noqa: E731
# test_models.py's budget: the AU model that reaches Avg.F1 ~0.56 on held-out people
# with degraded training faces (gray, low resolution: the look of the FER-2013 and scraped faces
# it pseudo-labels), which lifts its pseudo labels' precision there (benchmarks.pseudo_label_precision)
AU_SETTINGS = AUTrainingSettings(
    image_size=112, finetune_epochs=3, head_epochs=30, loss="bce", finetune_lr=1e-4, folds=3, degrade=0.5
)
ONE_EPOCH = AU_SETTINGS.replace(head_epochs=1, finetune_epochs=0)  # deliberately worse
EMOTION_SETTINGS = EmotionTrainingSettings(architecture="fer2013_cnn", scratch_epochs=15, folds=0)


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_renders) -> Path:
    """The small demo (DISFA, FER-2013, scraped) ingested, auto-labeled by YuNet, snapshotted,
    its AU and emotion models trained, evaluated and promoted."""
    root = tmp_path_factory.mktemp("curation") / "home"
    sources = demo_renders.path("small", seed=0)
    wh = Warehouse(root)
    ingest_disfa(wh, sources / "disfa", show_progress=False)
    ingest_fer2013(wh, sources / "fer2013.csv", show_progress=False)
    ingest_scraped(wh, sources / "scraped" / "batch-001", show_progress=False)
    images = wh.sql("SELECT image_id, source, source_uri, frame_index, media_path FROM images ORDER BY 3, 4")
    autolabel(wh, images, load_detector("yunet"), show_progress=False)
    version = snapshot_dataset_version(wh).version
    for settings in (AU_SETTINGS, EMOTION_SETTINGS):
        run = train_model(wh, version, settings, log=QUIET)
        evaluate_model(wh, run.model_id, log=QUIET)
        assert decide_promotion(wh, run.model_id, log=QUIET).promoted  # the first of its task
    shutil.copy(sources / "truth" / "faces.csv", root / "truth.csv")
    return root


def test_a_worse_model_is_not_promoted(home):
    wh = Warehouse(home)
    production = production_model(wh, "au")
    version = read_manifest_version(wh)
    run = train_model(wh, version, ONE_EPOCH, log=QUIET)
    evaluate_model(wh, run.model_id, log=QUIET)
    d = decide_promotion(wh, run.model_id, log=QUIET)
    print(f"\none-epoch model: {d.metric} {d.value:.3f} vs production {d.production_value:.3f}: {d.reason}")
    assert not d.promoted and d.production_model_id == production and d.value < d.production_value
    assert production_model(wh, "au") == production
    assert not decide_promotion(wh, run.model_id, log=QUIET).recorded  # decided once


def read_manifest_version(wh: Warehouse) -> str:
    return wh.sql("SELECT version FROM dataset_versions ORDER BY created_at").column("version")[-1].as_py()


def test_predictor_backends_agree_and_bad_crops_do_not_stop_a_run(home, tmp_path):
    wh = Warehouse(home)
    model_id = production_model(wh, "au")
    crops = wh.sql("SELECT crop_id, media_path FROM crops ORDER BY crop_id LIMIT 70").to_pylist()
    paths = [c["media_path"] for c in crops]
    onnx = Predictor.load(wh, model_id)
    torch_ = Predictor.load(wh, model_id, backend="torch", device="cpu")
    assert onnx.task == "au" and onnx.labels[:2] == ["AU1", "AU2"]
    a, b = onnx.predict(paths, batch_size=16), torch_.predict(paths, batch_size=64)
    assert a.shape == (70, 8) and np.abs(a - b).max() < 1e-4
    assert ((a >= 0) & (a <= 1)).all()
    # a missing and a truncated crop: a clear error, or skipped rows
    bad = tmp_path / "truncated.png"
    bad.write_bytes((home / paths[0]).read_bytes()[:50])
    with pytest.raises(OSError, match="truncated.png"):
        onnx.predict([paths[0], str(bad)])
    got = onnx.predict([paths[0], str(bad), str(tmp_path / "missing.png")], skip_unreadable=True)
    assert np.allclose(got[0], a[0], atol=1e-6) and np.isnan(got[1:]).all()
    found = onnx.predict_crops(wh, [crops[0]["crop_id"], "no-such-crop"])
    assert found.crop_ids == [crops[0]["crop_id"]] and found.skipped == [
        ("no-such-crop", "not in the crops table")
    ]
    z = torch_.embed(paths[:5])
    assert z.shape[0] == 5 and np.isfinite(z).all()


def _au_pseudo_precision(wh: Warehouse, home: Path, report) -> tuple[float, int, float, int]:
    """Precision of the present and absent AU pseudo labels on the FER-2013 + scraped faces (never
    trained on), scored against the renderer's truth (ferlab.demotruth, as
    benchmarks/pseudo_label_precision); prints the per-AU table."""
    truth = truth_faces(wh, home / "truth.csv")
    score = score_au_pseudo_labels(wh, truth, report.model_id, [int(k[2:]) for k in report.thresholds])
    t = score.overall()
    print(
        f"scored against the renderer's truth: {t.n_present + t.n_absent} labels on {len(truth)} FER-2013 + scraped faces"
    )
    print(score.table(unmet=report.unmet))
    present, absent = t.present_precision or 0.0, t.absent_precision or 0.0
    print(
        f"overall: present precision {present:.3f} ({t.n_present}), absent precision {absent:.3f} ({t.n_absent})"
    )
    return present, t.n_present, absent, t.n_absent


def test_au_pseudo_labels_on_faces_never_trained_on(home):
    wh = Warehouse(home)
    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9), log=QUIET)
    print("\n" + report.summary())
    labels = wh.sql(
        "SELECT crop_id, au, present, probability, threshold, annotator FROM au_labels WHERE label_source = 'pseudo'"
    ).to_pylist()
    assert labels and {r["annotator"] for r in labels} == {report.model_id}
    assert all(
        (r["probability"] >= r["threshold"]) if r["present"] else (r["probability"] <= r["threshold"])
        for r in labels
    )
    _, n_present, _, n_absent = _au_pseudo_precision(wh, home, report)
    assert n_present >= 20 and n_absent >= 100

    # re-running writes nothing new; the production model's pseudo labels reach a new version
    again = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9), log=QUIET)
    assert again.added == 0 and again.updated == 0 and again.rows == report.rows
    assert (report.folder / "settings.json").is_file() and (report.folder / "report.json").is_file()
    new = snapshot_dataset_version(wh)
    assert new.created and new.counts["au_source"].get("pseudo", 0) > 0


# Measured on this demo (benchmarks.pseudo_label_precision): the thresholds hold on the held-out
# DISFA people they were chosen on; on FER-2013 + scraped faces present / absent precision is
# 0.420 / 0.849 without degraded training faces, 0.546 / 0.886 with degrade=0.5. The absent side
# meets the bar; the present side cannot by a model trained on these labels: most wrong present
# labels are AU6/AU12/AU25 on identities whose resting face keeps a residual of intensity 1.5-1.9,
# which the DISFA label files round to 2 (present: what the model is taught) while the FER-2013 /
# scraped truth keeps it unrounded (absent). Scored as the DISFA files round (present from 1.5),
# present / absent precision is 0.809 / 0.847 without, 0.878 / 0.885 with degrade=0.5. strict: when
# a better model (or demo labels rounded the same way for every source) meets the bar, this marker
# must go.
@pytest.mark.xfail(
    strict=True,
    reason="issue 12: present AU pseudo labels miss 0.85 precision on unseen sources (the demo's "
    "DISFA labels round resting residuals of 1.5-1.9 to present)",
)
def test_au_pseudo_labels_meet_the_precision_bar(home):
    wh = Warehouse(home)
    report = pseudo_label(
        wh, "au", PseudoLabelSettings(target_precision=0.9), log=QUIET
    )  # stored: adds nothing
    present, _, absent, _ = _au_pseudo_precision(wh, home, report)
    assert present >= 0.85 and absent >= 0.85


@pytest.mark.server  # brain=True starts FiftyOne's database
def test_review_queue_and_emotion_pseudo_labels(home):
    wh = Warehouse(home)
    emo = pseudo_label(wh, "emotion", log=QUIET)
    print("\n" + emo.summary())
    assert emo.rows > 0 and set(emo.per_label) >= {"happy", "sad"}
    for task in ("au", "emotion"):
        r = build_review_queue(wh, task, ReviewSettings(min_detection_score=0.9, unique_top=10), log=QUIET)
        print(r.summary())
        assert r.by_reason["most_unique"] == 10 and r.by_reason["low_detection_score"] > 0
        assert sum(r.by_reason.values()) == r.added
        again = build_review_queue(
            wh, task, ReviewSettings(min_detection_score=0.9, unique_top=10), log=QUIET
        )
        assert again.added == 0  # keyed by (queue, face, reason)
    brain = ReviewSettings(brain=True, unique_top=10, queue="brain")
    r = build_review_queue(wh, "emotion", brain, log=QUIET)
    print(r.summary())
    assert r.by_reason["most_unique"] == 10
    details = wh.sql("SELECT detail FROM review_queue WHERE queue = 'brain' AND reason = 'most_unique'")
    assert all("FiftyOne Brain" in d for d in details.column("detail").to_pylist())
    rows = wh.sql(
        "SELECT reason, min(priority) AS lo, max(priority) AS hi FROM review_queue GROUP BY 1"
    ).to_pylist()
    assert {r["reason"] for r in rows} <= set(REASONS) and all(0 <= r["lo"] <= r["hi"] <= 1 for r in rows)
    assert {"between_thresholds", "low_detection_score", "most_unique"} <= {r["reason"] for r in rows}


def test_cli_and_dagster_reach_the_same_code(home, tmp_path, capsys):
    from dagster import DagsterInstance

    from dagster_project.definitions import defs
    from ferlab.cli import main

    out = tmp_path / "au.parquet"
    assert main(["--home", str(home), "predict", "au", "--out", str(out), "--backend", "torch"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows > 1000 and "AU12" in table.column_names
    assert main(["--home", str(home), "models", "--task", "au"]) == 0
    listing = capsys.readouterr().out
    assert "not promoted" in listing and ",True," in listing
    assert main(["--home", str(home), "pseudo-label", "au", "--target-precision", "2"]) == 2  # one error line
    assert "target_precision" in capsys.readouterr().err

    result = defs.resolve_job_def("curation_job").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        run_config={"resources": {"warehouse": {"config": {"home": str(home)}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("au_pseudo_labels")[0].metadata
    assert meta["model_id"].value == production_model(Warehouse(home), "au")
    assert "thresholds" in meta and "no_pseudo_labels_target_not_met" in meta
    assert result.asset_materializations_for_node("review_queue")[0].metadata["dagster/row_count"].value >= 0
