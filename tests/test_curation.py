"""The curation loop on the small demo, end to end: models trained on the DISFA people, promoted
only when better, pseudo-labels scored against the renderer's truth on faces no model trained on
(FER-2013 and scraped faces: they carry no AU label), the review queue, the CLI and the Dagster
assets over the same data root."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ferlab.demo import DEMO_AU
from ferlab.demotruth import (
    DISFA_LABEL_RULE,
    curator_au_labels,
    ingest_demo_sources,
    score_au_pseudo_labels,
    truth_faces,
)
from labeling.curation.experiment import ARMS, pseudo_label_experiment
from labeling.curation.pseudo import SourceCuts, pseudo_label, source_cuts
from labeling.curation.review import REASONS, build_review_queue
from labeling.curation.settings import PseudoExperimentSettings, PseudoLabelSettings, ReviewSettings
from models.pipeline import evaluate_model, load_run, train_model
from models.predict import Predictor
from models.predictions import FoldPredictions
from models.registry import decide_promotion, production_model
from models.settings import AUTrainingSettings, EmotionTrainingSettings
from models.tasks import get_task
from warehouse import Warehouse
from warehouse.schemas import AU_PRESENT_THRESHOLD
from warehouse.versions import read_manifest, snapshot_dataset_version

pytestmark = pytest.mark.slow  # trains models on the session's demo data root

# The curation gate's AU model (`make quality`): the settings that reach Avg.F1 ~0.63 on held-out
# people with degraded training faces (gray, low resolution: the look of the FER-2013 and scraped
# faces it pseudo-labels), which lifts its pseudo labels' precision there
# (benchmarks.pseudo_label_precision)
AU_SETTINGS = AUTrainingSettings(
    image_size=112, finetune_epochs=3, head_epochs=30, loss="bce", finetune_lr=1e-4, folds=3, degrade=0.5
)
EMOTION_SETTINGS = EmotionTrainingSettings(architecture="fer2013_cnn", scratch_epochs=15, folds=0)
# Against the demo's production AU model: its settings and protocol, one head epoch (deliberately worse)
ONE_EPOCH = AUTrainingSettings(**DEMO_AU).replace(head_epochs=1, finetune_epochs=0)


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_root) -> Path:
    """A private copy of the session's `ferlab demo` data root: the small demo (DISFA, FER-2013,
    scraped) ingested and auto-labeled, a dataset version, its AU and emotion models trained,
    evaluated and promoted, one curation turn (pseudo labels, the review queue) done."""
    root = demo_root.copy(tmp_path_factory.mktemp("curation") / "home")
    shutil.copy(root / "sources" / "truth" / "faces.csv", root / "truth.csv")
    return root


@pytest.fixture(scope="module")
def gate_home(tmp_path_factory, demo_renders) -> Path:
    """`make quality`: the small demo ingested, auto-labeled by YuNet, snapshotted, the curation
    gate's AU and emotion models trained, evaluated and promoted."""
    root = tmp_path_factory.mktemp("curation-gate") / "home"
    sources = demo_renders.path("small", seed=0)
    wh = Warehouse(root)
    version = ingest_demo_sources(wh, sources)
    for settings in (AU_SETTINGS, EMOTION_SETTINGS):
        run = train_model(wh, version, settings)
        evaluate_model(wh, run.model_id)
        assert decide_promotion(wh, run.model_id).promoted  # the first of its task
    shutil.copy(sources / "truth" / "faces.csv", root / "truth.csv")
    return root


def test_a_worse_model_is_not_promoted(home):
    wh = Warehouse(home)
    production = production_model(wh, "au")
    version = read_manifest_version(wh)
    run = train_model(wh, version, ONE_EPOCH)
    evaluate_model(wh, run.model_id)
    d = decide_promotion(wh, run.model_id)
    print(f"\none-epoch model: {d.metric} {d.value:.3f} vs production {d.production_value:.3f}: {d.reason}")
    assert not d.promoted and d.production_model_id == production and d.value < d.production_value
    assert production_model(wh, "au") == production
    assert not decide_promotion(wh, run.model_id).recorded  # decided once


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


def _au_pseudo_precision(
    wh: Warehouse, home: Path, report, threshold: float = DISFA_LABEL_RULE
) -> tuple[float, int, float, int]:
    """Precision of the present and absent AU pseudo labels on the FER-2013 + scraped faces (never
    trained on), scored against the renderer's truth (ferlab.demotruth, as
    benchmarks/pseudo_label_precision), an AU present from intensity `threshold`; prints the per-AU table."""
    truth = truth_faces(wh, home / "truth.csv")
    aus = [int(k[2:]) for k in report.thresholds]
    score = score_au_pseudo_labels(wh, truth, report.model_id, aus, threshold=threshold)
    t = score.overall()
    print(
        f"scored against the renderer's truth (present from intensity {threshold}): "
        f"{t.n_present + t.n_absent} labels on {len(truth)} FER-2013 + scraped faces"
    )
    print(score.table(unmet=report.unmet))
    present, absent = t.present_precision or 0.0, t.absent_precision or 0.0
    print(
        f"overall: present precision {present:.3f} ({t.n_present}), absent precision {absent:.3f} ({t.n_absent})"
    )
    return present, t.n_present, absent, t.n_absent


def test_au_pseudo_labels_on_faces_never_trained_on(home):
    wh = Warehouse(home)
    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9))
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

    # re-running writes nothing new
    again = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9))
    assert again.added == 0 and again.updated == 0 and again.rows == report.rows
    assert (report.folder / "settings.json").is_file() and (report.folder / "report.json").is_file()


def test_a_sources_pseudo_labels_stay_out_of_versions_until_curators_answer_it(demo_root, tmp_path):
    """Issue 23 part 3: the AU cuts were measured on DISFA's people, not on FER-2013 or scraped
    faces: their pseudo labels are unverified, shown to curators, kept out of dataset versions,
    until a curator has answered enough of the source's faces to choose its own cuts."""
    home = demo_root.copy(tmp_path / "home")
    wh = Warehouse(home)
    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9))
    assert set(report.unverified) == {"fer2013", "scraped"} and "unverified" in report.summary()
    stored = wh.sql(
        "SELECT DISTINCT calibration, verified FROM au_labels WHERE label_source = 'pseudo'"
    ).to_pylist()
    assert stored == [{"calibration": "out-of-fold", "verified": False}]
    assert snapshot_dataset_version(wh).counts["au_source"].get("pseudo", 0) == 0

    # A curator answers 60 FER-2013 faces: that source gets cuts of its own, verified; its pseudo
    # labels reach the next version, the scraped faces' (35 answers short) still do not.
    truth = truth_faces(wh, home / "sources" / "truth" / "faces.csv")
    fer = sorted(c for c, f in truth.items() if f.source == "fer2013")[:60]
    assert curator_au_labels(wh, truth, fer) == 60 * len(truth[fer[0]].intensities)
    snapshot_dataset_version(wh)
    calibrated = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9, min_verified_faces=50))
    assert calibrated.per_source["fer2013"] == {
        "calibration": "human:fer2013:60",
        "verified": True,
        "rows": calibrated.per_source["fer2013"]["rows"],
    }
    assert calibrated.unverified == ["scraped"] and set(calibrated.source_thresholds) == {"fer2013"}
    # Stored rows: the new verified FER-2013 labels; the earlier ones the new cuts no longer give are
    # withdrawn (unverified), the answered faces keep theirs (their human labels win): none counts.
    stored = wh.sql(
        "SELECT i.source, a.calibration, a.verified FROM au_labels a JOIN images i USING (image_id) "
        "WHERE a.label_source = 'pseudo' GROUP BY ALL"
    ).to_pylist()
    assert {"source": "fer2013", "calibration": "human:fer2013:60", "verified": True} in stored
    assert all(r["verified"] == r["calibration"].startswith("human:") for r in stored)
    assert not any(r["verified"] for r in stored if r["source"] == "scraped")
    counted = snapshot_dataset_version(wh)
    assert counted.counts["au_source"].get("pseudo", 0) > 0
    sources = (
        wh.sql(
            "SELECT DISTINCT source FROM dataset_manifest WHERE version = ? AND au_source = 'pseudo'",
            [counted.version],
        )
        .column("source")
        .to_pylist()
    )
    assert sources == ["fer2013"]
    answered = wh.sql(
        "SELECT DISTINCT au_source FROM dataset_manifest WHERE version = $v AND crop_id IN (SELECT unnest($c))",
        {"v": counted.version, "c": fer},
    )
    assert answered.column("au_source").to_pylist() == ["human"]

    # A model that trained on the answered faces cannot choose their cuts on its own fit: only its
    # held-out (out-of-fold) predictions of them count, and a face it fitted is left out.
    run = load_run(wh, calibrated.model_id)
    predictor = Predictor.load(wh, run.model_id)

    def cuts_if_trained_with(held_out: list[str]) -> SourceCuts:
        fold = run.folds[0]
        tested = FoldPredictions(
            0, fold.labels, np.zeros((len(held_out), len(fold.labels)), bool),
            np.full((len(held_out), len(fold.labels)), 0.5), None, fold.groups, held_out,
        )  # fmt: skip
        retrained = dataclasses.replace(run, dataset_version=counted.version, folds=[tested])
        manifest = read_manifest(wh, counted.version)
        settings = PseudoLabelSettings(min_verified_faces=50)
        return source_cuts(wh, get_task("au"), predictor, retrained, {}, manifest, ["fer2013"], settings)[
            "fer2013"
        ]

    assert cuts_if_trained_with(fer[:55]).calibration == "human:fer2013:55"
    assert not cuts_if_trained_with(fer[:40]).verified  # 40 held out: 10 short

    # Stricter cuts: the labels they no longer give are withdrawn (unverified), and leave versions.
    stricter = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.98, min_verified_faces=50))
    assert stricter.withdrawn > 0 and f"{stricter.withdrawn} withdrawn" in stricter.summary()
    gone = wh.sql(
        "SELECT count(*) AS n FROM au_labels WHERE calibration = 'withdrawn' AND verified"
    ).to_pylist()
    assert gone[0]["n"] == 0
    fewer = snapshot_dataset_version(wh).counts["au_source"].get("pseudo", 0)
    assert fewer < counted.counts["au_source"]["pseudo"]


# The truth counts an AU present as the DISFA label files the model learnt from do: they hold the
# rendered intensity rounded to an integer, so present from 1.5 (DISFA_LABEL_RULE). Scored with the
# unrounded intensity (present from 2), the resting residuals of 1.5-1.9 that the DISFA files teach
# as present count as wrong: present precision then drops to about 0.55 (printed below, and by
# benchmarks.pseudo_label_precision). The goal of 0.90 on both sides is not met by the demo model.
@pytest.mark.quality
def test_au_pseudo_labels_meet_the_precision_bar(gate_home):
    """`make quality`: the curation gate's model (degraded training faces) on the faces no AU model
    trains on."""
    wh = Warehouse(gate_home)
    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9))
    _au_pseudo_precision(wh, gate_home, report, threshold=AU_PRESENT_THRESHOLD)  # for the record
    present, _, absent, _ = _au_pseudo_precision(wh, gate_home, report)
    assert present >= 0.85 and absent >= 0.85


@pytest.mark.server  # brain=True starts FiftyOne's database
def test_review_queue_and_emotion_pseudo_labels(home):
    wh = Warehouse(home)
    emo = pseudo_label(wh, "emotion")
    print("\n" + emo.summary())
    assert emo.rows > 0 and set(emo.per_label) >= {"happy", "sad"}
    for task in ("au", "emotion"):
        # a queue of its own: the demo's curation turn filled the default one
        settings = ReviewSettings(min_detection_score=0.9, unique_top=10, queue=f"test-{task}")
        r = build_review_queue(wh, task, settings)
        print(r.summary())
        assert r.by_reason["most_unique"] == 10 and r.by_reason["low_detection_score"] > 0
        assert sum(r.by_reason.values()) == r.added
        again = build_review_queue(wh, task, settings)
        assert again.added == 0  # keyed by (queue, face, reason)
    brain = ReviewSettings(brain=True, unique_top=10, queue="brain")
    r = build_review_queue(wh, "emotion", brain)
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
    assert meta["report"].value.startswith("reports/") and "report_html" in meta  # the report, one click away
    queue_meta = result.asset_materializations_for_node("review_queue")[0].metadata
    assert queue_meta["dagster/row_count"].value >= 0
    assert queue_meta["au_report"].value.startswith("reports/") and "au_summary" in queue_meta


def test_pseudo_label_experiment_trains_both_arms_on_the_same_folds(home):
    """Issue 12 part 9 on a tiny budget: what is measured, not whether pseudo labels help here."""
    wh = Warehouse(home)
    version = read_manifest_version(wh)
    tiny = AU_SETTINGS.replace(image_size=64, head_epochs=5, finetune_epochs=1)
    settings = PseudoExperimentSettings(target_precision=0.8)
    result = pseudo_label_experiment(wh, version, tiny, settings)
    print("\n" + result.summary())
    gold, both = (result.folds[arm] for arm in ARMS)
    assert [f.groups for f in gold] == [f.groups for f in both] and len(gold) == 3
    assert all(g.startswith("disfa:") for f in gold for g in f.groups)  # tested on gold people only
    assert all(np.array_equal(a.y_true, b.y_true) for a, b in zip(gold, both))
    assert sum(a["faces"] for a in result.pseudo_per_fold) > 0
    md = result.report["markdown"].read_text()
    assert "gold + pseudo" in md and f"gold {100 * result.scores['gold']:.1f}" in md  # in %, as the tables
    saved = json.loads((result.folder / "result.json").read_text())
    assert saved["scores"] == pytest.approx(result.scores) and saved["metric"] == tiny.headline
    assert PseudoExperimentSettings.load(result.folder) == settings


def test_label_studio_prefill_is_the_production_models_output(home):
    """Queued faces carry both production models' view, whichever queue queued them: every
    label's probability (also the AUs between the pseudo-label thresholds, which have no stored
    label), as Predictor gives them, and one prediction naming both models."""
    from labeling.labelstudio.sync import prediction_for, queue_views, queued_faces, task_data

    wh = Warehouse(home)
    build_review_queue(wh, "au", ReviewSettings(queue="prefill", unique_top=5))
    rows = queued_faces(wh, "prefill")
    views = queue_views(wh, rows)
    au_model, emotion_model = production_model(wh, "au"), production_model(wh, "emotion")
    assert rows and set(views) == {r["crop_id"] for r in rows}
    assert all(set(v) == {"emotion", "au"} for v in views.values())  # an AU queue's faces: both models
    predictor = Predictor.load(wh, au_model)
    direct = predictor.predict([r["media_path"] for r in rows[:5]])
    for r, p in zip(rows[:5], direct):
        expected = dict(zip(predictor.labels, p.tolist()))
        assert views[r["crop_id"]]["au"].probabilities() == pytest.approx(expected, abs=1e-4)
    made = [m for m in (prediction_for(views[r["crop_id"]]) for r in rows) if m]
    assert made and {m["model_version"] for m in made} == {f"{emotion_model} + {au_model}"}
    data = task_data(rows[0], views[rows[0]["crop_id"]])
    assert data["queue"] == "prefill" and len(data["model_emotions"]) == 7
