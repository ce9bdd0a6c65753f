"""Fewer human labels for the same model, on the small demo's DISFA people at a tiny training
budget: the semi-supervised protocol (labeled gold vs + pseudo labels vs all gold: who is labeled,
who is hidden, who is tested, the report) and the simulated active learning (the strategies, the
curves). Whether either pays is `make quality`'s question (benchmarks.label_savings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferlab.cli import main
from labeling.curation.active import (
    STRATEGIES,
    Pool,
    active_learning_simulation,
    labels_to_reach,
    savings,
    spread_by_priority,
)
from labeling.curation.semisupervised import (
    ARMS,
    CEILING,
    LABELED,
    PSEUDO,
    GoldFrames,
    Teacher,
    gold_frames,
    labeled_people,
    pseudo_targets,
)
from labeling.curation.settings import ActiveLearningSettings, SemiSupervisedSettings
from models.data import Faces, group_kfold
from models.predictions import FoldPredictions
from models.settings import AUTrainingSettings
from models.train import fit
from warehouse import Warehouse
from warehouse.errors import ConfigError

TINY = AUTrainingSettings(image_size=48, head_epochs=2, finetune_epochs=0, folds=3, headline="avg_f1_pooled")


def _frames(video: list[str], frame: list[int], prob: list[float]) -> tuple[GoldFrames, np.ndarray]:
    n = len(video)
    faces = Faces(
        "au",
        ["AU1"],
        np.zeros((n, 1, 1, 1), np.uint8),
        np.zeros((n, 1)),
        np.array(video),
        np.array(["train"] * n),
        [str(i) for i in range(n)],
    )
    return GoldFrames(faces, np.array(video), np.array(frame)), np.array(prob, np.float64)[:, None]


def test_smoothing_follows_each_videos_time_axis_and_never_mixes_videos():
    # two videos interleaved, frames out of order: a spike in video a, video b flat
    frames, prob = _frames(
        ["a", "b", "a", "b", "a", "a", "a"], [3, 0, 1, 1, 2, 0, 4], [0.0, 0.5, 0.0, 0.5, 0.9, 0.0, 0.0]
    )
    idx = np.arange(7)
    out = frames.smooth(prob, idx, 3)
    by_frame_a = {f: out[i, 0] for i, f in enumerate(frames.frame) if frames.video[i] == "a"}
    assert by_frame_a == pytest.approx({0: 0.0, 1: 0.3, 2: 0.3, 3: 0.3, 4: 0.0})
    assert out[[1, 3], 0] == pytest.approx([0.5, 0.5])  # video b untouched by a's spike
    assert frames.smooth(prob, idx, 1) is prob  # off
    # a subset of rows (the pool) is smoothed among itself, in the given row order
    sub = np.array([4, 2, 0, 5])  # a's frames 2, 1, 3, 0
    assert frames.smooth(prob[sub], sub, 3)[:, 0] == pytest.approx([0.3, 0.3, 0.3, 0.0])


def test_labeled_pools_are_nested_seeded_and_never_below_two_people():
    people = [f"disfa:SN{i:03d}" for i in range(10)]
    small, large = (labeled_people(people, f, split=1, fold=0, seed=0) for f in (0.2, 0.4))
    assert len(small) == 2 and len(large) == 4 and set(small) < set(large)
    assert labeled_people(people, 0.2, 1, 0, 0) == small  # deterministic
    assert {tuple(labeled_people(people, 0.2, s, 0, 0)) for s in range(5)} != {tuple(small)}  # splits differ
    assert len(labeled_people(people[:3], 0.1, 0, 0, 0)) == 2


def test_settings_reject_a_budget_outside_zero_and_one():
    with pytest.raises(ConfigError, match="between 0 and 1"):
        SemiSupervisedSettings(label_fractions=(0.2, 1.0))
    assert SemiSupervisedSettings(label_fractions=(0.4, 0.2, 0.4)).label_fractions == (0.2, 0.4)


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_root) -> Path:
    return demo_root.copy(tmp_path_factory.mktemp("semi") / "home")


def _version(wh: Warehouse) -> str:
    return wh.sql("SELECT version FROM dataset_versions ORDER BY created_at").column("version")[-1].as_py()


@pytest.mark.slow
def test_three_arms_on_the_same_folds_from_the_cli(home, capsys):
    wh = Warehouse(home)
    version = _version(wh)
    argv = ["--home", str(home), "semi-supervised", "--version", version, "--splits", "1", "--folds", "2"]
    argv += ["--label-fractions", "0.2", "0.4", "--image-size", "48", "--head-epochs", "2"]
    argv += [
        "--finetune-epochs",
        "0",
        "--headline",
        "avg_f1_pooled",
        "--targets",
        "hard",
        "--min-support",
        "3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "20% labeled" in out and "40% labeled" in out and "gap closed" in out
    folder = Path(out.strip().splitlines()[-1].removeprefix("report: ")).parent
    result = json.loads((folder / "result.json").read_text())
    trials = result["trials"]
    assert len(trials) == 2 * 1 * 2  # folds x splits x budgets
    frames = gold_frames(wh, version, TINY)
    groups = frames.faces.groups
    for fold, (train, test) in enumerate(group_kfold(groups, 2)):
        training, tested = set(groups[train]), set(groups[test])
        for t in (t for t in trials if t["fold"] == fold):
            labeled, hidden = set(t["labeled"]), set(t["unlabeled"])
            assert labeled | hidden == training and not labeled & hidden and not (labeled | hidden) & tested
        for split in range(1):
            small, large = (
                [t for t in trials if (t["fold"], t["split"], t["fraction"]) == (fold, split, f)][0]
                for f in (0.2, 0.4)
            )
            assert set(small["labeled"]) < set(large["labeled"])
    # the ceiling is one model per fold, the same for every split and budget
    for fold in range(2):
        assert len({t["avg_f1"][CEILING] for t in trials if t["fold"] == fold}) == 1
    assert [b["fraction"] for b in result["budgets"]] == [0.2, 0.4]
    for b in result["budgets"]:
        assert {LABELED, PSEUDO, CEILING} <= set(b) and b["splits"] == 1 and b["trials"] == 2
        paired = [
            t["avg_f1"][PSEUDO] - t["avg_f1"][LABELED] for t in trials if t["fraction"] == b["fraction"]
        ]
        assert b["paired_gain"] == pytest.approx(np.mean(paired)) and b["paired_spread"] == pytest.approx(
            np.std(paired)
        )
    assert all(t["pseudo"]["targets"] == "hard" for t in trials)
    md = (folder / "report.md").read_text()
    assert (
        "## Per label budget" in md
        and all(arm in md for arm in ARMS)
        and (folder / "budgets.png").stat().st_size > 0
    )
    assert SemiSupervisedSettings.load(folder) == SemiSupervisedSettings(
        splits=1, label_fractions=(0.2, 0.4), targets="hard", min_support=3
    )


@pytest.mark.slow
def test_the_teacher_never_reads_a_hidden_gold_label(home):
    wh = Warehouse(home)
    frames = gold_frames(wh, _version(wh), TINY)
    faces, groups = frames.faces, frames.faces.groups
    people = sorted(set(groups))
    labeled = np.flatnonzero(np.isin(groups, people[:3]))
    pool = np.flatnonzero(~np.isin(groups, people[:3]))
    train, val = labeled[::2], labeled[1::2]
    teachers = [Teacher(fit(faces, train, val, TINY), train, val)]
    settings = SemiSupervisedSettings(targets="hard", min_support=3, smooth_frames=5)
    before, added = pseudo_targets(frames, teachers, pool, TINY, settings)
    scrambled = faces.targets.copy()
    scrambled[pool] = 1 - scrambled[pool]
    hidden = GoldFrames(Faces(**{**faces.__dict__, "targets": scrambled}), frames.video, frames.frame)
    after, _ = pseudo_targets(hidden, teachers, pool, TINY, settings)
    np.testing.assert_array_equal(np.isnan(before), np.isnan(after))
    np.testing.assert_array_equal(np.nan_to_num(before, nan=-1), np.nan_to_num(after, nan=-1))
    assert added["present"] + added["absent"] + added["unknown"] == before.size
    soft, _ = pseudo_targets(frames, teachers, pool, TINY, settings.replace(targets="soft", person_norm=True))
    assert not np.isnan(soft).any() and ((soft >= 0) & (soft <= 1)).all()


def test_person_normalization_moves_each_videos_median_to_the_reference():
    frames, _ = _frames(["a", "a", "a", "b", "b", "b"], [0, 1, 2, 0, 1, 2], [0] * 6)
    prob = np.array([[0.5], [0.9], [0.6], [0.1], [0.2], [0.95]])  # b's resting face scores low
    out = frames.person_normalized(prob, np.arange(6), reference=np.array([0.0]))
    logit = np.log(out / (1 - out))[:, 0]
    assert np.median(logit[:3]) == pytest.approx(0) and np.median(logit[3:]) == pytest.approx(0)
    assert np.argsort(logit[:3]).tolist() == np.argsort(prob[:3, 0]).tolist()  # order within a person kept


def _pool(prob: list[list[float]], thresholds: list[float], embedding: np.ndarray | None = None) -> Pool:
    p = np.array(prob, np.float64)
    n, k = p.shape
    val = FoldPredictions(0, [f"AU{i}" for i in range(k)], np.zeros((0, k), bool), np.zeros((0, k)), None, [])
    return Pool(
        np.arange(n) + 100, lambda: p, lambda: embedding, np.array(thresholds), lambda: val, list(val.labels)
    )


def test_uncertainty_picks_the_frames_nearest_the_thresholds():
    pool = _pool([[0.95, 0.05], [0.55, 0.3], [0.2, 0.35], [0.5, 0.8]], thresholds=[0.5, 0.3])
    settings = ActiveLearningSettings()
    picked = STRATEGIES["uncertainty"](pool, 2, np.random.default_rng(0), settings)
    # closeness per frame, the mean over AUs of 1 - |p - t| / the side's width: 0.13, 0.95, 0.66, 0.64
    assert picked.tolist() == [1, 2]
    assert len(set(STRATEGIES["random"](pool, 3, np.random.default_rng(0), settings).tolist())) == 3


def test_the_queue_strategy_takes_the_review_queues_most_unique_faces_first():
    # no cut reaches the precision on an empty validation set: the queue is its most unique faces
    z = np.array([[1.0, 0.0], [0.99, 0.01], [0.98, 0.02], [0.0, 1.0], [0.97, 0.03]], np.float32)
    pool = _pool([[0.5, 0.5]] * 5, thresholds=[0.5, 0.5], embedding=z)
    settings = ActiveLearningSettings(unique_top=1, neighbours=1)
    assert STRATEGIES["queue"](pool, 1, np.random.default_rng(0), settings).tolist() == [3]
    assert (
        len(set(STRATEGIES["queue"](pool, 4, np.random.default_rng(0), settings).tolist())) == 4
    )  # then random


def test_the_diverse_queue_spreads_its_picks_over_the_faces():
    """Neighbouring frames of one video are near-duplicates: the top of the queue would spend a
    round on one expression. `spread_by_priority` takes the next face by priority x distance to
    the faces picked before it."""
    rng = np.random.default_rng(0)
    video = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.01, (6, 3))  # six frames of one stretch
    others = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    z = np.vstack([video, others])
    weight = np.array([1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.5, 0.4])
    assert spread_by_priority(z, weight, 3).tolist() == [0, 6, 7]
    assert spread_by_priority(z, weight, 1).tolist() == [0]  # the first by priority alone
    assert sorted(spread_by_priority(z, weight, 20).tolist()) == list(range(8))  # no face twice
    pool = _pool([[0.5, 0.5]] * 8, thresholds=[0.5, 0.5], embedding=z)
    top = ActiveLearningSettings(unique_top=8, neighbours=1, diverse=False)
    diverse = ActiveLearningSettings(unique_top=8, neighbours=1)
    plain = STRATEGIES["queue"](pool, 3, np.random.default_rng(0), top).tolist()
    spread = STRATEGIES["queue"](pool, 3, np.random.default_rng(0), diverse).tolist()
    assert plain[0] == spread[0] and len(set(spread) & {6, 7}) == 2


def test_labels_to_reach_interpolates_between_rounds_and_savings_compare_with_random():
    curve = {"labels": [10.0, 20.0, 30.0], "mean": [0.4, 0.5, 0.7], "std": [0, 0, 0]}
    assert labels_to_reach(curve, 0.6) == pytest.approx(25.0)
    assert labels_to_reach(curve, 0.3) == 10.0 and labels_to_reach(curve, 0.8) is None
    random = {"labels": [10.0, 20.0, 30.0], "mean": [0.4, 0.45, 0.5], "std": [0, 0, 0]}
    assert savings({"queue": curve, "random": random}) == {"queue": pytest.approx(20 / 30), "random": 1.0}


@pytest.mark.slow
def test_active_learning_curves_per_strategy(home):
    wh = Warehouse(home)
    training = TINY.replace(folds=2)
    settings = ActiveLearningSettings(
        strategies=("queue", "random"), seeds=1, rounds=1, initial=16, per_round=8
    )
    seen: list = []
    result = active_learning_simulation(wh, _version(wh), training, settings, on_round=seen.append)
    assert len(seen) == len(result.rounds) == 2 * 2 * 2  # strategies x folds x (rounds + 1)
    for name in ("queue", "random"):
        assert result.curves[name]["labels"] == [16.0, 24.0]
        assert all(0 <= v <= 1 for v in result.curves[name]["mean"])
    # per fold, every strategy starts from the same random frames: round 0 is the same model
    for fold in range(2):
        first = [r.predictions.prob for r in result.rounds if r.round == 0 and r.fold == fold]
        assert len(first) == 2 and np.allclose(first[0], first[1])
    assert result.saving["random"] == pytest.approx(1.0)
    saved = json.loads((result.folder / "result.json").read_text())
    assert saved["curves"]["queue"]["mean"] == pytest.approx(result.curves["queue"]["mean"])
    assert (result.folder / "curves.png").stat().st_size > 0 and "## Labels to reach" in result.report[
        "markdown"
    ].read_text()
