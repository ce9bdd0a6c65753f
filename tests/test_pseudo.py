"""Pseudo-label thresholds (labeling.curation.pseudo.pseudo_thresholds) against a brute-force oracle:
every possible cut is tried, the chosen one reaches the target with the most coverage."""

from __future__ import annotations

import numpy as np
import pytest

from labeling.curation.pseudo import pseudo_thresholds
from labeling.curation.settings import PseudoLabelSettings
from models.predictions import FoldPredictions
from warehouse.errors import ConfigError


def _folds(prob: np.ndarray, y: np.ndarray, labels: list[str], k: int = 3) -> list[FoldPredictions]:
    parts = np.array_split(np.arange(len(prob)), k)
    return [FoldPredictions(f, labels, y[i], prob[i], None, [f"g{f}"]) for f, i in enumerate(parts)]


def _brute_upper(p, t, target, support):
    """The lowest cut (among the scores) with precision >= target and >= support faces above it."""
    best = None
    for cut in np.unique(p):
        above = p >= cut
        if above.sum() >= support and t[above].mean() >= target and (best is None or cut < best):
            best = cut
    return best


def _brute_lower(p, t, target, support, upper):
    best = None
    pool = p < upper if upper is not None else np.ones(len(p), bool)
    for cut in np.unique(p[pool]):
        below = pool & (p <= cut)
        if below.sum() >= support and (~t[below]).mean() >= target and (best is None or cut > best):
            best = cut
    return best


@pytest.mark.parametrize("seed", range(5))
def test_au_thresholds_match_brute_force_and_reach_the_target(seed):
    rng = np.random.default_rng(seed)
    n, labels = 300, ["AU1", "AU2", "AU12"]
    y = rng.random((n, 3)) < np.array([0.1, 0.4, 0.6])
    # informative but noisy scores, quantised so that ties occur
    prob = np.clip(np.round(0.5 * y + rng.normal(0.25, 0.2, (n, 3)), 2), 0, 1).astype(np.float32)
    cuts = pseudo_thresholds(_folds(prob, y, labels), target_precision=0.9, min_support=10)
    for k, label in enumerate(labels):
        p, t = prob[:, k].astype(np.float64), y[:, k]
        up = _brute_upper(p, t, 0.9, 10)
        low = _brute_lower(p, t, 0.9, 10, up)
        cut = cuts[label]
        if up is None and low is None:
            assert cut is None
            continue
        assert cut.upper == (None if up is None else pytest.approx(up))
        assert cut.lower == (None if low is None else pytest.approx(low))
        if cut.upper is not None:
            assert t[p >= cut.upper].mean() >= 0.9 and cut.precision_upper >= 0.9
            assert cut.support_upper == (p >= cut.upper).sum()  # what the report's support column says
        if cut.lower is not None:
            assert (~t[p <= cut.lower]).mean() >= 0.9 and cut.lower < (cut.upper or 2)
            assert cut.support_lower == (p <= cut.lower).sum()


def test_a_label_the_model_cannot_tell_gets_no_thresholds():
    rng = np.random.default_rng(0)
    y = rng.random((200, 1)) < 0.5
    prob = rng.random((200, 1)).astype(np.float32)  # no information: neither side reaches 0.9
    assert pseudo_thresholds(_folds(prob, y, ["AU9"]), 0.9) == {"AU9": None}


def test_emotion_cut_on_the_top_probability_per_predicted_class():
    rng = np.random.default_rng(1)
    n, labels = 400, ["happy", "sad", "neutral"]
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += np.where(rng.random(n) < 0.8, 3.0, 0.0)  # right 80 % of the time, confidently
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cuts = pseudo_thresholds(_folds(prob.astype(np.float32), y, labels), 0.9, 10)
    top, pred = prob.max(1), prob.argmax(1)
    for k, label in enumerate(labels):
        cut = cuts[label]
        assert cut is not None and cut.lower is None
        mine = (pred == k) & (top >= cut.upper - 1e-7)
        assert (y[mine] == k).mean() >= 0.9


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="target_precision"):
        PseudoLabelSettings(target_precision=1.5)
    with pytest.raises(ConfigError, match="backend"):
        PseudoLabelSettings(backend="tensorrt")


class _FakePredictor:
    """What face_predictions asks of a Predictor; counts the faces it is asked to score."""

    model_id, fingerprint, labels = "au-fake", "0123", ["AU1", "AU2"]

    def __init__(self) -> None:
        self.asked: list[str] = []

    def media_column(self) -> str:
        return "media_path"

    def predict(self, paths, batch_size=64, skip_unreadable=False):
        self.asked += list(paths)
        out = np.array([[0.1, 0.9] if "bad" not in p else [np.nan, np.nan] for p in paths], np.float32)
        return out.reshape(len(paths), 2)


def test_face_predictions_are_cached_per_model_and_only_new_faces_run(wh):
    import pyarrow as pa

    from labeling.curation.pseudo import face_predictions

    faces = pa.table(
        {"crop_id": ["a", "b", "c"], "image_id": ["i", "i", "j"], "media_path": ["a.png", "bad.png", "c.png"]}
    )
    p = _FakePredictor()
    got, skipped = face_predictions(wh, p, faces)
    assert got.column("crop_id").to_pylist() == ["a", "c"] and skipped == [("b", "bad.png")]
    again, _ = face_predictions(wh, p, faces)  # nothing new: only the unreadable one is tried again
    assert again.equals(got) and p.asked == ["a.png", "bad.png", "c.png", "bad.png"]
    more = pa.concat_tables([faces, pa.table({"crop_id": ["d"], "image_id": ["k"], "media_path": ["d.png"]})])
    got, _ = face_predictions(wh, p, more)
    assert got.column("crop_id").to_pylist() == ["a", "c", "d"] and p.asked[-1] == "d.png"


def test_the_task_type_says_where_its_pseudo_labels_go():
    import pyarrow as pa

    from labeling.curation.pseudo import LABEL_ROWS, Cut, _label_rows_of
    from models.tasks import TASKS, get_task

    assert {t.label_table for t in TASKS.values()} == {"au_labels", "emotion_labels"}
    assert {t.source_column for t in TASKS.values()} == {"au_source", "emotion_source"}
    for task in TASKS.values():  # every task has its rows, and an AUTask of other AUs the AUs'
        assert _label_rows_of(task) is LABEL_ROWS[type(task)]
    assert _label_rows_of(type(get_task("au"))(aus=(1, 2))) is _label_rows_of(get_task("au"))
    predicted = pa.table(
        {"crop_id": ["a", "b"], "image_id": ["i", "j"], "AU1": [0.9, 0.1], "AU2": [0.5, 0.5]}
    )
    cuts = {"AU1": Cut(lower=0.2, upper=0.8), "AU2": None}
    rows, per_label = _label_rows_of(get_task("au"))(predicted, ["AU1", "AU2"], cuts, "au-m")
    assert rows.column("au").to_pylist() == [1, 1] and rows.column("present").to_pylist() == [True, False]
    assert per_label == {"AU1": {"present": 1, "absent": 1}, "AU2": {"present": 0, "absent": 0}}
    emotions = pa.table(
        {"crop_id": ["a", "b"], "image_id": ["i", "j"], "happy": [0.9, 0.4], "sad": [0.1, 0.6]}
    )
    cuts = {"happy": Cut(lower=None, upper=0.8), "sad": Cut(lower=None, upper=0.7)}
    rows, _ = _label_rows_of(get_task("emotion"))(emotions, ["happy", "sad"], cuts, "emotion-m")
    assert rows.column("crop_id").to_pylist() == ["a"] and rows.column("emotion").to_pylist() == ["happy"]


def test_a_source_with_no_labels_gets_typed_empty_rows():
    """Bug: a source whose cuts give no label made rows of null type, and joining them to the
    other sources' rows failed (pyarrow: schema at index 1 was different)."""
    import pyarrow as pa

    from labeling.curation.pseudo import LABEL_ROWS, Cut
    from models.tasks import AUTask, EmotionTask
    from warehouse.schemas import TABLES

    predicted = pa.table({"crop_id": ["a"], "image_id": ["i"], "AU1": [0.5], "happy": [0.5]})
    for task, labels, table in ((AUTask, ["AU1"], "au_labels"), (EmotionTask, ["happy"], "emotion_labels")):
        labeled, _ = LABEL_ROWS[task](predicted, labels, {labels[0]: Cut(lower=0.1, upper=0.4)}, "m")
        none, _ = LABEL_ROWS[task](predicted, labels, {labels[0]: None}, "m")
        assert labeled.num_rows == 1 and none.num_rows == 0 and none.schema == labeled.schema
        assert all(none.schema.field(c).type == TABLES[table].schema.field(c).type for c in none.column_names)
        assert pa.concat_tables([none, labeled]).num_rows == 1


def test_a_cut_chosen_on_few_faces_must_hold_with_confidence():
    """`confidence`: the lower Clopper-Pearson bound of a cut's precision must reach the target. Ten
    right answers out of ten are a measured 1.0 but bound only 0.1 ** (1 / 10) = 0.79 at 90 %."""
    y = np.ones((10, 1), bool)
    prob = np.linspace(0.9, 1.0, 10).reshape(-1, 1)
    assert pseudo_thresholds(_folds(prob, y, ["AU1"], 1), 0.9, 10)["AU1"].upper == pytest.approx(0.9)
    assert pseudo_thresholds(_folds(prob, y, ["AU1"], 1), 0.9, 10, confidence=0.9) == {"AU1": None}
    assert pseudo_thresholds(_folds(prob, y, ["AU1"], 1), 0.79, 10, confidence=0.9)["AU1"] is not None
    # Many faces: the bound nears the measured precision, and the cut nears the point estimate's.
    rng = np.random.default_rng(3)
    p = rng.random((4000, 1))
    t = rng.random((4000, 1)) < p
    point = pseudo_thresholds(_folds(p, t, ["AU1"]), 0.9, 10)["AU1"]
    bound = pseudo_thresholds(_folds(p, t, ["AU1"]), 0.9, 10, confidence=0.9)["AU1"]
    assert point.upper < bound.upper < point.upper + 0.1 and bound.precision_upper >= 0.9


def test_fold_predictions_keep_their_faces(tmp_path):
    from models.predictions import load_predictions, save_predictions

    fold = FoldPredictions(0, ["AU1"], np.zeros((2, 1), bool), np.zeros((2, 1)), None, ["g"], ["c1", "c2"])
    save_predictions(
        tmp_path / "p.npz", [fold, FoldPredictions(1, ["AU1"], fold.y_true, fold.prob, None, ["h"])]
    )
    back = load_predictions(tmp_path / "p.npz")
    assert back[0].crop_ids == ["c1", "c2"] and back[1].crop_ids == []  # older files have none
