"""The review queue's measures: k-NN uniqueness against brute force; FiftyOne Brain's uniqueness
and mistakenness on our own embeddings and probabilities, with FiftyOne's real database."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from labeling.curation.review import brain_scores, knn_uniqueness


def test_knn_uniqueness_matches_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1300, 16))  # more than one 1024-row block
    z[5] = np.nan  # an unreadable crop
    got = knn_uniqueness(z, k=3)
    ok = np.flatnonzero(~np.isnan(z).any(1))
    zn = z[ok] / np.linalg.norm(z[ok], axis=1, keepdims=True)
    d = 1 - zn @ zn.T
    np.fill_diagonal(d, np.inf)
    assert np.isnan(got[5])
    assert np.allclose(got[ok], np.sort(d, axis=1)[:, 2])


def _clusters(rng) -> np.ndarray:
    z = np.concatenate([rng.normal(c, 0.05, size=(20, 8)) for c in (-1.0, 1.0)])
    z[7] = rng.normal(0, 1, 8) * 5  # one face unlike the others
    return z


@pytest.mark.server  # FiftyOne's database (mongod)
def test_brain_finds_the_outlier_and_the_confidently_wrong_label(tmp_path):
    rng = np.random.default_rng(1)
    z = _clusters(rng)
    labels = ["happy", "sad"]
    truth = np.array([0] * 20 + [1] * 20)
    prob = np.where(truth[:, None] == np.arange(2), 0.8, 0.2)
    prob[12] = [0.02, 0.98]  # labeled happy, the model is sure it is sad
    truth[30] = -1  # no label
    paths = [str(tmp_path / f"{i}.png") for i in range(len(z))]
    uniqueness, mistakenness = brain_scores(paths, z, prob, labels, truth)
    assert int(np.argmax(uniqueness)) == 7 and int(np.argmax(knn_uniqueness(z))) == 7
    assert int(np.nanargmax(mistakenness)) == 12 and np.isnan(mistakenness[30])
    only_unique, none = brain_scores(paths, z)
    assert none is None and int(np.argmax(only_unique)) == 7


class _Predictor:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def media_column(self) -> str:
        return "media_path"

    def embed(self, paths, batch_size=64):
        return np.eye(len(paths), 4)


def _inputs(task: str, labels: list[str], prob: list[list[float]], **settings):
    import pyarrow as pa

    from labeling.curation.review import ReviewInputs
    from labeling.curation.settings import ReviewSettings
    from models.tasks import get_task

    faces = pa.table(
        {
            "crop_id": ["a", "b", "c"],
            "media_path": ["a.png", "b.png", "c.png"],
            "au_source": ["human", None, "pseudo"],
            "emotion_source": ["gold", None, "pseudo"],
            "emotion": ["happy", None, "sad"],
            "au1": [1.0, None, 0.0],
            "au2": [0.0, None, 1.0],
        }
    )
    return ReviewInputs(
        wh=None,
        task=get_task(task),
        settings=ReviewSettings(**settings),
        model_id=f"{task}-m",
        faces=faces,
        predictor=_Predictor(labels),
        rows_at=np.array([0, 1, 2]),
        prob=np.array(prob, dtype=np.float64),
    )


def test_each_reason_returns_its_own_rows(monkeypatch):
    import labeling.curation.review as review
    from labeling.curation.pseudo import Cut
    from models.tasks import TASKS

    assert all(review.task_reasons(t) for t in TASKS.values())  # every task can be reviewed
    monkeypatch.setattr(review, "load_run", lambda wh, model_id: type("Run", (), {"folds": []}))
    monkeypatch.setattr(review, "_detection_scores", lambda wh, faces: {"a": 0.9, "b": 0.2})
    monkeypatch.setattr(review, "_weak_emotions", lambda wh, faces: {"b": "sad"})

    au = _inputs("au", ["AU1", "AU2"], [[0.1, 0.9], [0.5, 0.9], [0.5, 0.5]], mistake_threshold=0.5)
    monkeypatch.setattr(review, "pseudo_thresholds", lambda *a: {"AU1": Cut(0.2, 0.8), "AU2": Cut(None, 0.7)})
    # b and c (no human or gold label) are unsure about AU1, the only two-sided AU; a is human-labeled
    assert review.between_thresholds(au) == [
        (1, "between_thresholds", 1.0, "AU1 0.50"),
        (2, "between_thresholds", 1.0, "AU1 0.50"),
    ]
    assert review.weak_disagrees(au) == []  # AUs have no weak labels
    assert [r[:2] for r in review.likely_mistake(au)] == [(0, "likely_mistake")]  # c's labels are pseudo
    assert review.low_detection_score(au) == [(1, "low_detection_score", 0.8, "score 0.20")]
    top_two, none = (dataclasses.replace(au, settings=au.settings.replace(unique_top=k)) for k in (2, 0))
    assert [r[:2] for r in review.most_unique(top_two)] == [(0, "most_unique"), (1, "most_unique")]
    assert review.most_unique(none) == []

    emotion = _inputs("emotion", ["happy", "sad"], [[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    monkeypatch.setattr(review, "pseudo_thresholds", lambda *a: {"happy": Cut(None, 0.7), "sad": None})
    assert [r[:2] for r in review.between_thresholds(emotion)] == [(1, "between_thresholds")]
    assert [r[:2] for r in review.weak_disagrees(emotion)] == [(1, "weak_disagrees")]
    assert [r[:2] for r in review.likely_mistake(emotion)] == [(0, "likely_mistake")]  # gold happy, model sad
