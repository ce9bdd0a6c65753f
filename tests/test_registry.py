"""The model registry's promotion rule on hand-made model records (run.json + eval_metrics, no
training): first model promoted, a worse one or a tie not, a better one yes, once per model; a
production model scored on another version is replayed on the candidate's version."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from models.pipeline import model_dir
from models.predictions import FoldPredictions, save_predictions
from models.registry import decide_promotion, decisions, list_models, production_model
from models.settings import AUTrainingSettings
from warehouse.precedence import counts_sql


def _model(
    wh, model_id: str, version: str, avg_f1: float | None, pooled: float | None = None, **settings
) -> str:
    """A model record as train_model + evaluate_model leave it (without weights)."""
    s = AUTrainingSettings(image_size=64, **settings)
    out = model_dir(wh, "au", model_id)
    out.mkdir(parents=True)
    info = {"dataset_version": version, "settings": s.to_dict(), "network": s.network().to_dict()}
    (out / "run.json").write_text(json.dumps(info))
    labels = s.task.labels
    fold = FoldPredictions(
        0, labels, np.zeros((2, len(labels)), bool), np.zeros((2, len(labels))), None, ["g"]
    )
    save_predictions(out / "predictions.npz", [fold])
    if avg_f1 is not None:
        row = dict(
            model_id=model_id, dataset_version=version, task="au", fold=None, metric="avg_f1", label=""
        )
        wh.append("eval_metrics", pa.Table.from_pylist([{**row, "value": avg_f1}]))
    if pooled is not None:
        row = dict(
            model_id=model_id, dataset_version=version, task="au", fold=None, metric="avg_f1_pooled", label=""
        )
        wh.append("eval_metrics", pa.Table.from_pylist([{**row, "value": pooled}]))
    return model_id


def test_a_model_is_judged_by_its_own_headline(wh):
    decide_promotion(wh, _model(wh, "au-a", "v-1", 0.50, pooled=0.55))
    # worse by the seeds' per-fold mean, better pooled, and pooled is what it is judged by
    d = decide_promotion(wh, _model(wh, "au-p", "v-1", 0.40, pooled=0.60, headline="avg_f1_pooled"))
    assert d.promoted and d.metric == "avg_f1_pooled" and (d.value, d.production_value) == (0.60, 0.55)


def test_only_a_better_model_on_the_same_evaluation_is_promoted(wh):
    assert production_model(wh, "au") is None
    first = decide_promotion(wh, _model(wh, "au-a", "v-1", 0.50))
    assert first.promoted and first.production_model_id is None and first.reason == "no production model yet"
    assert production_model(wh, "au") == "au-a"

    worse = decide_promotion(wh, _model(wh, "au-worse", "v-1", 0.40))
    assert not worse.promoted
    assert (worse.value, worse.production_value, worse.production_model_id) == (0.40, 0.50, "au-a")
    tie = decide_promotion(wh, _model(wh, "au-tie", "v-1", 0.50))
    assert not tie.promoted  # a tie never replaces production
    assert production_model(wh, "au") == "au-a"

    better = decide_promotion(wh, _model(wh, "au-b", "v-1", 0.55))
    assert better.promoted and better.production_value == 0.50
    assert production_model(wh, "au") == "au-b"

    # idempotent: deciding again returns the first decision and writes nothing
    n = wh.count("model_promotions")
    again = decide_promotion(wh, "au-worse")
    assert not again.recorded and not again.promoted and wh.count("model_promotions") == n
    assert decisions(wh, "au").column("model_id").to_pylist() == ["au-a", "au-worse", "au-tie", "au-b"]
    assert production_model(wh, "emotion") is None


def test_production_from_another_version_is_replayed_on_the_candidates_version(wh):
    decide_promotion(wh, _model(wh, "au-old", "v-1", 0.70, loss="pr"))
    replays = []

    def retrain(wh_, version, settings, metric):
        replays.append((version, settings))
        return "au-replayed", 0.60  # the production recipe scores 0.60 on v-2's folds

    # 0.65 on v-2 is worse than production's 0.70 on v-1, but better on the same evaluation
    d = decide_promotion(wh, _model(wh, "au-new", "v-2", 0.65, folds=4), retrain=retrain)
    assert [v for v, _ in replays] == ["v-2"]
    assert replays[0][1].loss == "pr" and replays[0][1].folds == 4  # its recipe, the candidate's folds
    assert d.promoted and d.production_value == 0.60 and "au-replayed" in d.reason

    # different AUs: not the same evaluation, never promoted
    other = decide_promotion(wh, _model(wh, "au-aus", "v-2", 0.99, aus=(1, 2)), retrain=retrain)
    assert not other.promoted and "not comparable" in other.reason and len(replays) == 1


def test_only_the_production_models_pseudo_labels_count(wh):
    decide_promotion(wh, _model(wh, "au-a", "v-1", 0.5))
    decide_promotion(wh, _model(wh, "au-b", "v-1", 0.4))
    rows = [
        dict(
            image_id="i",
            crop_id="c",
            au=12,
            intensity=None,
            present=True,
            label_source="pseudo",
            annotator=m,
            probability=0.9,
        )
        for m in ("au-a", "au-b")
    ]
    wh.append("au_labels", pa.Table.from_pylist(rows))
    counted = wh.sql(f"SELECT annotator FROM au_labels WHERE {counts_sql('au')}").column("annotator")
    assert counted.to_pylist() == ["au-a"]


def test_models_listing_shows_production_and_decisions(wh):
    decide_promotion(wh, _model(wh, "au-a", "v-1", 0.5))
    assert list_models(wh).num_rows == 0  # model_runs rows come from evaluate_model
    run = dict(model_id="au-a", task="au", architecture="mobilenet_v2", dataset_version="v-1", config="{}")
    run.update(loss="bce", weights_source=None, checkpoint=None, onnx=None, report=None)
    run.update(created_at=dt.datetime.now(dt.UTC), headline_metric="avg_f1", headline_value=0.5)
    wh.append("model_runs", pa.Table.from_pylist([run]))
    listed = list_models(wh, "au").to_pylist()
    assert listed[0]["production"] and listed[0]["decision"] == "promoted"


@pytest.mark.parametrize("missing", ["au-nope"])
def test_unknown_model_is_a_clear_error(wh, missing):
    with pytest.raises(FileNotFoundError, match=missing):
        decide_promotion(wh, missing)


def test_cli_says_what_is_missing_in_one_line(wh, capsys):
    from ferlab.cli import main

    home = str(wh.home)
    assert main(["--home", home, "models"]) == 0
    assert capsys.readouterr().out.startswith("task,model_id,dataset_version,metric,value,production")
    assert main(["--home", home, "pseudo-label", "au"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no production au model") or err.startswith("error: no dataset version")
    assert len(err.strip().splitlines()) == 1
    assert main(["--home", home, "predict", "emotion", "--out", str(wh.home / "p.parquet")]) == 2
    assert "no production emotion model" in capsys.readouterr().err
    assert main(["--home", home, "review-queue", "au", "--unique-top", "-1"]) == 2
    assert "unique_top" in capsys.readouterr().err
    assert main(["--home", home, "models", "--decide", "au-nope"]) == 2
    assert "au-nope" in capsys.readouterr().err
