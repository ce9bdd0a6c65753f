"""The production models' view of a face (labeling.curation.model_view), on hand-made model
records: every label's probability from the prediction cache, the calls at the pseudo-label cuts."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet  # noqa: F401  (pa.parquet in the conftest helper)
import pytest

from labeling.curation.model_view import au_states, emotion_states, named, production_views
from labeling.curation.pseudo import Cut
from tests.conftest import hand_made_production_model


def test_names_say_what_an_au_is():
    assert named("AU4") == "AU4 brow lowerer"
    assert named("AU12") == "AU12 lip corner puller"
    assert named("happy") == "happy"


def test_an_au_is_present_absent_or_unsure_by_its_cuts():
    cuts = {"AU1": Cut(0.2, 0.8), "AU2": Cut(None, 0.8), "AU4": None}
    prob = np.array([[0.9, 0.1, 0.99], [0.5, 0.9, 0.01], [0.1, 0.5, 0.5]])
    states = au_states(prob, ["AU1", "AU2", "AU4"], cuts)
    words = [[("present", "absent", "unsure")[s] for s in row] for row in states]
    # AU2 has no lower cut: a low probability is not called absent; AU4 has no cut at all
    assert words == [
        ["present", "unsure", "unsure"],
        ["unsure", "present", "unsure"],
        ["absent", "unsure", "unsure"],
    ]


def test_the_top_emotion_is_called_only_at_its_cut():
    cuts = {"happy": Cut(None, 0.7), "sad": None}
    prob = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    words = [
        [("present", "absent", "unsure")[s] for s in row]
        for row in emotion_states(prob, ["happy", "sad"], cuts)
    ]
    assert words == [["present", "absent"], ["unsure", "absent"], ["absent", "unsure"]]


def test_views_come_from_the_production_models_caches(wh):
    hand_made_production_model(
        wh, "emotion", "emotion-m", {"c1": {"happy": 0.85, "sad": 0.15}, "c2": {"sad": 0.5, "neutral": 0.3}}
    )
    hand_made_production_model(wh, "au", "au-m", {"c1": {"AU12": 0.95, "AU4": 0.5}})
    views = production_views(wh, ["c1", "c2", "c3"])
    assert set(views) == {"c1", "c2"}  # c3 was never predicted: no view, and no model runs
    emo, au = views["c1"]["emotion"], views["c1"]["au"]
    assert (emo.model_id, emo.top.label, emo.top.state) == ("emotion-m", "happy", "present")
    assert emo.probabilities()["happy"] == pytest.approx(0.85)
    assert views["c2"]["emotion"].top.label == "sad" and views["c2"]["emotion"].top.state == "unsure"
    assert "au" not in views["c2"]
    assert [c.label for c in au.with_state("present")] == ["AU12"]
    assert [c.label for c in au.with_state("unsure")] == ["AU4"]
    assert len(au.with_state("absent")) == len(au.calls) - 2 and au.calls[0].name == "inner brow raiser"
