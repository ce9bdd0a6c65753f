"""Metrics against hand-computed small cases (and scikit-learn where importable); reports."""

from __future__ import annotations

import re

import numpy as np
import pytest

from models.metrics import (
    average_precision,
    choose_thresholds,
    classification_scores,
    confusion_matrix,
    multilabel_scores,
    pr_curve,
)
from models.predictions import FoldPredictions
from models.render import NOT_COMPARABLE
from models.report import compare_losses_report, evaluate_folds, write_report
from models.tasks import TASKS

AUS = ["AU1", "AU2", "AU4", "AU12"]
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


# ---------------------------------------------------------------------------------- metrics


def test_multilabel_scores_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=bool)
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1], [0.7, 0.3]])
    s = multilabel_scores(y, p, np.array([0.5, 0.5]))
    # label 0: pred [1,0,1,1] -> TP 2, FP 1, FN 1 ; label 1: pred [0,1,0,0] -> TP 1, FP 0, FN 0
    assert s["precision"].tolist() == pytest.approx([2 / 3, 1.0])
    assert s["recall"].tolist() == pytest.approx([2 / 3, 1.0])
    assert s["f1"].tolist() == pytest.approx([2 / 3, 1.0])
    assert s["support"].tolist() == [3, 1]


def test_multilabel_scores_zero_division_is_zero():
    y = np.zeros((3, 1), dtype=bool)
    s = multilabel_scores(y, np.array([[0.1], [0.2], [0.3]]), np.array([0.5]))
    assert (s["precision"][0], s["recall"][0], s["f1"][0], s["support"][0]) == (0.0, 0.0, 0.0, 0)


def _best_f1_brute_force(y_k: np.ndarray, p_k: np.ndarray) -> float:
    best = 0.0
    for t in sorted(set(p_k.tolist())):
        pred = [pi >= t for pi in p_k]
        tp = sum(1 for a, b in zip(pred, y_k) if a and b)
        fp = sum(1 for a, b in zip(pred, y_k) if a and not b)
        fn = sum(1 for a, b in zip(pred, y_k) if not a and b)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def test_choose_thresholds_maximises_f1():
    rng = np.random.default_rng(1)
    y = rng.random((60, 5)) < 0.35
    p = np.round(np.clip(0.35 * y + rng.random((60, 5)) * 0.7, 0, 1), 2)  # rounding makes ties
    t = choose_thresholds(y, p)
    f1 = multilabel_scores(y, p, t)["f1"]
    for k in range(5):
        assert f1[k] == pytest.approx(_best_f1_brute_force(y[:, k], p[:, k]))
        # midpoint rule: the threshold lies strictly between two distinct scores
        assert t[k] not in set(p[:, k].tolist()) or t[k] == p[:, k].min()


def test_choose_thresholds_small_case_by_hand():
    y = np.array([[1], [1], [0], [1], [0]], dtype=bool)
    p = np.array([[0.9], [0.8], [0.7], [0.3], [0.1]])
    # cut at >=0.8: TP2 FP0 FN1 -> F1 0.8 ; >=0.3: TP3 FP1 FN0 -> 0.857 (best) ; midpoint (0.3+0.1)/2
    assert choose_thresholds(y, p)[0] == pytest.approx(0.2)
    grid = np.array([0.25, 0.5, 0.75])
    assert choose_thresholds(y, p, grid=grid)[0] == pytest.approx(0.25)


def test_choose_thresholds_no_positives_predicts_none():
    y = np.zeros((4, 1), dtype=bool)
    p = np.array([[0.2], [0.9], [0.4], [0.1]])
    t = choose_thresholds(y, p)
    assert t[0] > 0.9
    assert multilabel_scores(y, p, t)["precision"][0] == 0.0


def test_choose_thresholds_reaches_the_brute_force_optimum():
    """Against an oracle: every distinct score tried as a cut, one by one (speed: `make bench`)."""
    rng = np.random.default_rng(0)
    y = rng.random((400, 5)) < 0.2
    p = np.round(rng.random((400, 5)), 2)  # rounded: ties between samples, as real scores have
    t = choose_thresholds(y, p)

    def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
        tp = np.sum(truth & predicted)
        return 2 * tp / (truth.sum() + predicted.sum())

    for j in range(y.shape[1]):
        best = max(f1(y[:, j], p[:, j] >= cut) for cut in np.unique(p[:, j]))
        assert f1(y[:, j], p[:, j] >= t[j]) == pytest.approx(best)
    t_grid = choose_thresholds(y, p, grid=np.linspace(0, 1, 101))
    assert t_grid.shape == (5,)


def test_pr_curve_and_average_precision_by_hand():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    precision, recall = pr_curve(y, p)
    assert precision.tolist() == pytest.approx([1.0, 1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.0, 0.5, 0.5, 1.0, 1.0])
    # AP = 0.5 * 1 + 0 * 0.5 + 0.5 * 2/3 + 0 * 0.5
    assert average_precision(y, p) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(np.zeros(3), np.array([0.1, 0.5, 0.9])) == 0.0


def test_ties_share_one_curve_point():
    precision, recall = pr_curve(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.2]))
    assert recall.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])


def test_confusion_and_classification_scores_by_hand():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    expected = np.zeros((4, 4), dtype=int)
    for a, b in [(0, 0), (0, 1), (1, 1), (2, 2), (2, 0), (2, 2)]:
        expected[a, b] += 1
    assert np.array_equal(cm, expected)
    s = classification_scores(y_true, y_pred, 4)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"].tolist() == pytest.approx([1 / 2, 1 / 2, 1.0, 0.0])  # class 3: never predicted
    assert s["recall"].tolist() == pytest.approx([1 / 2, 1.0, 2 / 3, 0.0])
    assert s["f1"].tolist() == pytest.approx([1 / 2, 2 / 3, 0.8, 0.0])
    assert s["support"].tolist() == [2, 1, 3, 0]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)


def test_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.random((200, 4)) < 0.3
    p = np.round(rng.random((200, 4)) * 0.7 + 0.3 * y, 3)
    t = np.array([0.3, 0.5, 0.6, 0.45])
    s = multilabel_scores(y, p, t)
    pred = p >= t
    assert s["f1"] == pytest.approx(sk.f1_score(y, pred, average=None, zero_division=0))
    assert s["precision"] == pytest.approx(sk.precision_score(y, pred, average=None, zero_division=0))
    assert s["recall"] == pytest.approx(sk.recall_score(y, pred, average=None, zero_division=0))
    for k in range(4):
        assert average_precision(y[:, k], p[:, k]) == pytest.approx(
            sk.average_precision_score(y[:, k], p[:, k])
        )
    yt, yp = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert np.array_equal(confusion_matrix(yt, yp, 5), sk.confusion_matrix(yt, yp, labels=range(5)))
    c = classification_scores(yt, yp, 5)
    assert c["accuracy"] == pytest.approx(sk.accuracy_score(yt, yp))
    assert c["precision"] == pytest.approx(sk.precision_score(yt, yp, average=None, zero_division=0))


# ---------------------------------------------------------------------------------- reports


def _au_folds(seed: int = 0, n_folds: int = 3, n: int = 50) -> list[FoldPredictions]:
    rng = np.random.default_rng(seed)
    folds = []
    for k in range(n_folds):
        y = rng.random((n, len(AUS))) < 0.3
        p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
        folds.append(FoldPredictions(k, AUS, y, p, choose_thresholds(y, p), [f"S{k}a", f"S{k}b"]))
    return folds


def _emotion_folds(seed: int = 0, n_folds: int = 2, n: int = 70) -> list[FoldPredictions]:
    rng = np.random.default_rng(seed)
    folds = []
    for k in range(n_folds):
        y = rng.integers(0, len(EMOTIONS), n)
        p = rng.random((n, len(EMOTIONS)))
        p[np.arange(n), y] += 0.5
        folds.append(FoldPredictions(k, EMOTIONS, y, p / p.sum(1, keepdims=True), None, [f"id{k}"]))
    return folds


def _value(rows, metric, label="", fold=None):
    (v,) = [r["value"] for r in rows if r["metric"] == metric and r["label"] == label and r["fold"] == fold]
    return v


def test_evaluate_folds_au_rows_consistent():
    folds = _au_folds()
    rows = evaluate_folds("au", folds)
    assert all(set(r) == {"fold", "metric", "label", "value"} for r in rows)
    for f in folds:
        s = multilabel_scores(f.y_true, f.prob, f.thresholds)
        assert _value(rows, "f1", "AU2", f.fold) == pytest.approx(s["f1"][1])
        assert _value(rows, "avg_f1", "", f.fold) == pytest.approx(s["f1"].mean())
    per_fold = [_value(rows, "avg_f1", "", k) for k in range(3)]
    assert _value(rows, "avg_f1") == pytest.approx(np.mean(per_fold))
    assert _value(rows, "avg_f1_std") == pytest.approx(np.std(per_fold, ddof=1))
    assert _value(rows, "f1", "AU4") == pytest.approx(
        np.mean([_value(rows, "f1", "AU4", k) for k in range(3)])
    )
    assert _value(rows, "support_total", "AU1") == sum(int(f.y_true[:, 0].sum()) for f in folds)
    assert _value(rows, "n_folds") == 3
    with pytest.raises(ValueError):
        evaluate_folds("pose", folds)


def test_evaluate_folds_emotion_rows():
    folds = _emotion_folds()
    rows = evaluate_folds("emotion", folds)
    acc = [float((f.prob.argmax(1) == f.y_true).mean()) for f in folds]
    assert [_value(rows, "accuracy", "", k) for k in range(2)] == pytest.approx(acc)
    assert _value(rows, "accuracy") == pytest.approx(np.mean(acc))
    n_conf = sum(_value(rows, "confusion_total", f"{a}->{b}") for a in EMOTIONS for b in EMOTIONS)
    assert n_conf == 140


def test_au_report_files_numbers_and_atomic_rewrite(tmp_path):
    out = tmp_path / "reports" / "au-v1"
    folds = _au_folds()
    model = {"architecture": "mobilenet_v2", "loss": "lsep", "weights_source": "ImageNet (packaged)"}
    paths = write_report(out, task="au", title="AU model", dataset_version="v1", model=model, folds=folds)
    assert paths["markdown"] == out / "report.md" and paths["html"] == out / "report.html"
    assert {p.name for p in paths["plots"]} == {"f1_per_au.png", "pr_curves.png"}
    for p in [paths["markdown"], paths["html"], *paths["plots"]]:
        assert p.is_file() and p.stat().st_size > 0
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])

    md = paths["markdown"].read_text()
    rows = evaluate_folds("au", folds)
    avg, std = _value(rows, "avg_f1"), _value(rows, "avg_f1_std")
    assert f"{100 * avg:.1f} ± {100 * std:.1f}" in md  # every score in %
    assert f"{100 * _value(rows, 'recall', 'AU12', 1):.1f}" in md
    assert "v1" in md and "ImageNet (packaged)" in md
    assert NOT_COMPARABLE in md
    assert "EAC-Net" in md and "48.5" in md and "ME-GraphAU" in md and "63.1" in md
    html = paths["html"].read_text()
    assert f"{100 * avg:.1f}" in html
    for name in re.findall(r'<img src="([^"]+)"', html):
        assert "/" not in name and (out / name).is_file()  # relative, beside the HTML

    (out / "stale.txt").write_text("from the old report")
    write_report(out, task="au", title="AU model", dataset_version="v2", model=model, folds=_au_folds(seed=5))
    assert not (out / "stale.txt").exists()  # the folder is replaced whole, not merged
    assert "Dataset version: v2" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["au-v1"]  # no temp folders left


def test_the_headline_block_comes_first(tmp_path):
    """Issue 24: the figure that decides (promotion's), its baseline and the production model's
    figure, before the model's settings and the per-label tables."""
    block = [
        ("Avg.F1 (avg_f1_pooled), the figure promotion compares", "**0.733**"),
        ("Trivial baseline", "0.41"),
    ]
    md = write_report(
        tmp_path / "r", task="au", title="AU", dataset_version="v1", model={"loss": "bce"}, folds=_au_folds(),
        headline=block,
    )["markdown"].read_text()  # fmt: skip
    assert md.index("## Headline") < md.index("## Model") < md.index("## Folds")
    assert "| Avg.F1 (avg_f1_pooled), the figure promotion compares | **0.733** |" in md
    no_block = write_report(
        tmp_path / "s", task="au", title="AU", dataset_version="v1", model={}, folds=_au_folds()
    )["markdown"].read_text()
    assert "## Headline" not in no_block


def test_emotion_report(tmp_path):
    folds = _emotion_folds()
    paths = write_report(
        tmp_path / "emo",
        task="emotion",
        title="Emotion",
        dataset_version="v9",
        model={"weights": ""},
        folds=folds,
    )
    assert [p.name for p in paths["plots"]] == ["confusion_matrix.png"]
    md = paths["markdown"].read_text()
    rows = evaluate_folds("emotion", folds)
    assert f"{100 * _value(rows, 'accuracy'):.1f} ± {100 * _value(rows, 'accuracy_std'):.1f}" in md
    assert f"{100 * _value(rows, 'mean_precision'):.1f}" in md  # Table 1's Average column
    assert "| Fold | angry | disgust |" in md
    assert "Backbone weights: random init" in md
    folds1 = folds[:1]
    md = write_report(
        tmp_path / "emo2",
        task="emotion",
        title="E",
        dataset_version="v9",
        model={"backbone weights": "x.pth"},
        folds=folds1,
    )["markdown"].read_text()
    assert "Backbone weights: x.pth" in md
    assert "73.2" in md and "76.8" in md and NOT_COMPARABLE in md


def test_on_published_data_flag_and_no_baselines(tmp_path):
    folds = _emotion_folds(n_folds=1)
    md = write_report(
        tmp_path / "a",
        task="emotion",
        title="t",
        dataset_version="v",
        model={},
        folds=folds,
        on_published_data=True,
    )["markdown"].read_text()
    assert NOT_COMPARABLE not in md and "same data set" in md
    md = write_report(
        tmp_path / "b", task="emotion", title="t", dataset_version="v", model={}, folds=folds, baselines=False
    )["markdown"].read_text()
    assert "Published baselines" not in md
    assert all(TASKS[t].published_baselines for t in ("au", "emotion"))


def test_compare_losses_report(tmp_path):
    results = {"bce": _au_folds(1), "lsep": _au_folds(2), "pr": _au_folds(3)}
    paths = compare_losses_report(tmp_path / "cmp", dataset_version="v3", results=results)
    md = paths["markdown"].read_text()
    assert [p.name for p in paths["plots"]] == ["f1_by_loss.png"] and paths["plots"][0].is_file()
    for name, folds in results.items():
        rows = evaluate_folds("au", folds)
        assert f"{100 * _value(rows, 'avg_f1'):.1f} ± {100 * _value(rows, 'avg_f1_std'):.1f}" in md
        assert f"{100 * _value(rows, 'f1', 'AU4'):.1f} ± {100 * _value(rows, 'f1_std', 'AU4'):.1f}" in md
        assert name in md
    assert "v3" in md and NOT_COMPARABLE in md
    assert "not evaluated on the same held-out groups" not in md


def test_a_fold_without_positives_is_undefined_not_zero_and_pooled_f1_is_beside_it():
    """Fold 0 has no positive of AU2: the seeds' per-fold mean counts it as F1 0, the defined
    mean leaves it out, pooled F1 scores all held-out faces together (each fold's cut)."""
    fold0 = FoldPredictions(
        0,
        ["AU1", "AU2"],
        np.array([[1, 0], [0, 0], [1, 0]], bool),
        np.array([[0.9, 0.1], [0.2, 0.6], [0.8, 0.2]]),
        np.array([0.5, 0.5]),
        ["a"],
    )  # AU1: tp 2; AU2: one false positive, no positives
    fold1 = FoldPredictions(
        1,
        ["AU1", "AU2"],
        np.array([[1, 1], [0, 1], [0, 0]], bool),
        np.array([[0.4, 0.9], [0.6, 0.7], [0.1, 0.1]]),
        np.array([0.5, 0.5]),
        ["b"],
    )  # AU1: fn 1, fp 1 -> F1 0; AU2: tp 2 -> F1 1
    rows = evaluate_folds("au", [fold0, fold1])
    got = {(r["metric"], r["label"]): r["value"] for r in rows if r["fold"] is None}
    assert got[("f1", "AU2")] == pytest.approx(0.5)  # the seeds' protocol: (0 + 1) / 2
    assert got[("f1_defined", "AU2")] == pytest.approx(1.0) and got[("folds_without_positives", "AU2")] == 1
    assert got[("folds_without_positives", "AU1")] == 0
    # pooled AU2: tp 2, fp 1, fn 0 -> 4/5; AU1: tp 2, fp 1, fn 1 -> 4/6
    assert got[("f1_pooled", "AU2")] == pytest.approx(0.8) and got[("f1_pooled", "AU1")] == pytest.approx(
        2 / 3
    )
    assert got[("avg_f1_pooled", "")] == pytest.approx((0.8 + 2 / 3) / 2)
    assert got[("f1_all_present", "AU2")] == pytest.approx(2 * 2 / (2 + 6))  # 2 positives of 6 faces
    assert got[("avg_f1_defined", "")] == pytest.approx((got[("f1_defined", "AU1")] + 1.0) / 2)


def test_threshold_prior_pulls_few_positives_toward_one_half():
    y = np.array([[1], [0], [0], [0]], dtype=bool)
    p = np.array([[0.1], [0.05], [0.02], [0.01]])
    best = choose_thresholds(y, p)[0]  # one positive at 0.1: the cut sits just under it
    pulled = choose_thresholds(y, p, prior=3)[0]
    assert best < 0.1 and pulled == pytest.approx((1 * best + 3 * 0.5) / 4)
    none = np.zeros((4, 1), dtype=bool)
    assert choose_thresholds(none, p, prior=3)[0] == 0.5  # no positives: 0.5, not "predict none"
    assert choose_thresholds(none, p)[0] == 0.5  # (the max score is below 0.5 here)
