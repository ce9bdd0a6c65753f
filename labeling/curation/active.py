"""Does the review queue spend a curator's labels well? Active learning, simulated.

    result = active_learning_simulation(wh, version, AUTrainingSettings(...), ActiveLearningSettings())
    print(result.summary())    # per strategy: Avg.F1 after each round; labels the queue needs vs random

Per subject-exclusive fold of the gold DISFA people (`models.data.group_kfold`) and per seed: the
fold's training frames are the pool, their gold labels hidden. A random `initial` frames are
labeled first; then each round a strategy picks `per_round` more frames, a simulated curator
answers them with the gold labels, and the AU model is retrained on every frame answered so far
(at the training settings' budget) and scored on the fold's held-out people. Strategies
(`STRATEGIES`):

- `queue`: the review queue's reasons (`labeling.curation.review`): faces between the pseudo-label
  cuts (`between_thresholds`, priority the share of unsure AUs, cuts from the model's validation
  frames) and the `unique_top` most unique faces in the model's embedding (`most_unique`); with
  `diverse` (the default) each pick is the face of the highest priority x cosine distance to the
  faces picked before it (`spread_by_priority`), else the highest priorities first; random frames
  once the queue runs dry;
- `uncertainty`: the frames whose AU probabilities sit closest to the model's decision thresholds;
- `random`: frames drawn at random.

The headline per (strategy, seed, round) is the training settings' (Avg.F1 pooled over the folds).
The queue's saving: the labels it needs to reach random sampling's final figure, as a share of
random's labels (linear between rounds).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from labeling.curation.experiment import experiment_id
from labeling.curation.pseudo import pseudo_thresholds
from labeling.curation.review import au_unsure, knn_uniqueness
from labeling.curation.semisupervised import GoldFrames, gold_frames
from labeling.curation.settings import ActiveLearningSettings
from models import render
from models.data import group_kfold, validation_split
from models.device import torch_device
from models.evaluation import overall
from models.predictions import FoldPredictions
from models.report import evaluate_folds
from models.settings import AUTrainingSettings
from models.train import FitResult, fit, fold_predictions, predict_embeddings, predict_probabilities
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    """What a strategy sees after a round: the model's probabilities and embeddings of the frames
    not yet answered, its thresholds and its validation predictions; each computed when a strategy
    first asks (random sampling asks for none)."""

    candidates: np.ndarray  # face indices not yet labeled
    probabilities: Callable[[], np.ndarray]  # (candidates, K)
    embedding: Callable[[], np.ndarray]  # (candidates, D)
    thresholds: np.ndarray  # (K,) the model's decision thresholds
    validation_predictions: Callable[[], FoldPredictions]  # the model on its validation frames
    labels: list[str]

    @cached_property
    def prob(self) -> np.ndarray:
        return self.probabilities()

    @cached_property
    def validation(self) -> FoldPredictions:  # for the queue's cuts
        return self.validation_predictions()


Strategy = Callable[[Pool, int, np.random.Generator, ActiveLearningSettings], np.ndarray]


def choose_random(pool: Pool, k: int, rng: np.random.Generator, s: ActiveLearningSettings) -> np.ndarray:
    return rng.permutation(len(pool.candidates))[:k]


def choose_uncertain(pool: Pool, k: int, rng: np.random.Generator, s: ActiveLearningSettings) -> np.ndarray:
    """Closest to the decision thresholds: mean over AUs of 1 - |p - t| / (the side's width)."""
    t = pool.thresholds[None, :]
    width = np.where(pool.prob >= t, 1 - t, t)
    closeness = 1 - np.abs(pool.prob - t) / np.maximum(width, 1e-6)
    return np.argsort(-closeness.mean(1), kind="stable")[:k]


def choose_queue(pool: Pool, k: int, rng: np.random.Generator, s: ActiveLearningSettings) -> np.ndarray:
    """The review queue's order: max over reasons of the priority, then random among the rest."""
    cuts = pseudo_thresholds([pool.validation], s.target_precision, s.min_support)
    unsure, two_sided = au_unsure(pool.prob, pool.labels, cuts)
    priority = np.full(len(pool.candidates), -1.0)
    if two_sided:
        share = unsure.sum(1) / two_sided
        priority[share > 0] = share[share > 0]
    if s.unique_top:
        dist = knn_uniqueness(pool.embedding(), s.neighbours)
        top = np.argsort(-np.nan_to_num(dist, nan=-1))[: s.unique_top]
        priority[top] = np.maximum(priority[top], dist[top] / max(float(np.nanmax(dist)), 1e-12))
    tie = rng.random(len(priority))  # the queue's ties and the dry queue's fill: no hidden order
    if not s.diverse:
        return np.lexsort((tie, -priority))[:k]
    return spread_by_priority(pool.embedding(), np.where(priority > 0, priority, 0) + 1e-3 * tie, k)


def spread_by_priority(z: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """`k` rows of `z` picked greedily by weight x cosine distance to the nearest row picked so far
    (the first by weight alone): the queue's priorities, spread over the faces instead of `k`
    neighbouring frames of one video. One pass over the rows per pick, no all-pairs."""
    unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    nearest = np.full(len(z), 2.0)  # cosine distance is at most 2
    picked: list[int] = []
    for _ in range(min(k, len(z))):
        score = weight * nearest
        score[picked] = -np.inf
        j = int(np.argmax(score))
        picked.append(j)
        nearest = np.minimum(nearest, 1 - unit @ unit[j])
    return np.array(picked, dtype=np.int64)


STRATEGIES: dict[str, Strategy] = {
    "queue": choose_queue,
    "uncertainty": choose_uncertain,
    "random": choose_random,
}


@dataclass(frozen=True)
class Round:
    strategy: str
    seed: int
    fold: int
    round: int
    labels: int  # frames answered so far
    predictions: FoldPredictions  # on the fold's held-out people


@dataclass
class ActiveLearningResult:
    experiment_id: str
    dataset_version: str
    metric: str
    rounds: list[Round]
    curves: dict[str, dict[str, list[float]]]  # strategy -> labels, mean, std (over seeds)
    saving: dict[str, float | None]  # strategy -> labels to reach random's final / random's labels
    report: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    def summary(self) -> str:
        lines = [f"{self.experiment_id} ({self.metric}, labels spent -> mean over seeds):"]
        for name, c in self.curves.items():
            points = ", ".join(f"{n}: {m:.3f}" for n, m in zip(c["labels"], c["mean"]))
            share = self.saving.get(name)
            reach = "never" if share is None else f"{share:.0%} of random's labels"
            lines.append(f"  {name}: {points}; reaches random's final figure with {reach}")
        return "\n".join(lines)


def active_learning_simulation(
    wh: Warehouse,
    version: str,
    training: AUTrainingSettings,
    settings: ActiveLearningSettings | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> ActiveLearningResult:
    """Run the simulation of the module docstring on `version`; write the report (with the curves'
    PNG), the settings and result.json to `<home>/reports/<version>/<experiment id>/`.

    Raises:
        ValueError: no gold AU faces, or too few gold people for the folds.
    """
    settings = settings or ActiveLearningSettings()
    eid = experiment_id(version, training, settings, kind="au-active-learning")
    frames = gold_frames(wh, version, training)
    groups = frames.faces.groups
    rounds: list[Round] = []
    for fold, (train_all, test_idx) in enumerate(group_kfold(groups, training.folds)):
        for seed in range(settings.seeds):
            start = np.random.default_rng([seed, fold]).permutation(train_all)[: settings.initial]
            for name in settings.strategies:
                rng = np.random.default_rng([seed, fold, len(name)])
                for r in _simulate(
                    frames, training, settings, name, start, train_all, test_idx, rng, seed, fold
                ):
                    rounds.append(r)
                    if on_round is not None:
                        on_round(r)
    return _write(wh, eid, version, training, settings, rounds)


def _simulate(
    frames: GoldFrames,
    training: AUTrainingSettings,
    settings: ActiveLearningSettings,
    name: str,
    start: np.ndarray,
    train_all: np.ndarray,
    test_idx: np.ndarray,
    rng: np.random.Generator,
    seed: int,
    fold: int,
):
    faces = frames.faces
    labeled = np.sort(start)
    for r in range(settings.rounds + 1):
        tr, va, _ = validation_split(faces.groups, labeled, seed=training.seed)
        model = fit(faces, tr, va, training)
        predictions = fold_predictions(faces, fold, model, va, test_idx, training)
        log.info(f"{name} seed {seed} fold {fold} round {r}: {len(labeled)} labels")
        yield Round(name, seed, fold, r, len(labeled), predictions)
        if r == settings.rounds:
            break
        candidates = np.setdiff1d(train_all, labeled)
        pool = _pool(frames, model, candidates, va, predictions.thresholds, training)
        chosen = candidates[STRATEGIES[name](pool, settings.per_round, rng, settings)]
        labeled = np.union1d(labeled, chosen)  # the curator answers with the gold labels


def _pool(frames, model: FitResult, candidates, val_idx, thresholds, training) -> Pool:
    faces = frames.faces
    return Pool(
        candidates,
        lambda: predict_probabilities(model.model, faces, candidates, training),
        lambda: predict_embeddings(
            model.model, faces, candidates, training.network(), torch_device(training.device)
        ),
        np.asarray(thresholds, np.float64),
        lambda: FoldPredictions(
            0,
            faces.labels,
            faces.targets[val_idx].astype(bool),
            predict_probabilities(model.model, faces, val_idx, training),
            None,
            [],
        ),
        list(faces.labels),
    )


# ---- the figures ------------------------------------------------------------------------------
def curves(rounds: list[Round], metric: str) -> dict[str, dict[str, list[float]]]:
    """strategy -> {labels, mean, std}: the headline pooled over the folds per (seed, round), then
    mean and std over the seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in dict.fromkeys(r.strategy for r in rounds):
        mine = [r for r in rounds if r.strategy == name]
        labels, means, stds = [], [], []
        for k in sorted({r.round for r in mine}):
            at = [r for r in mine if r.round == k]
            per_seed = [
                overall(
                    evaluate_folds(
                        "au", sorted((r.predictions for r in at if r.seed == s), key=lambda f: f.fold)
                    ),
                    metric,
                )
                for s in sorted({r.seed for r in at})
            ]
            labels.append(float(np.mean([r.labels for r in at])))
            means.append(float(np.mean(per_seed)))
            stds.append(float(np.std(per_seed)))
        out[name] = {"labels": labels, "mean": means, "std": stds}
    return out


def labels_to_reach(curve: dict[str, list[float]], target: float) -> float | None:
    """The labels at which the curve first reaches `target` (linear between rounds), or None."""
    x, y = curve["labels"], curve["mean"]
    for i, v in enumerate(y):
        if v >= target:
            if i == 0:
                return x[0]
            return x[i - 1] + (target - y[i - 1]) / (v - y[i - 1]) * (x[i] - x[i - 1])
    return None


def savings(c: dict[str, dict[str, list[float]]]) -> dict[str, float | None]:
    """strategy -> labels it needs to reach random's final figure / random's final labels."""
    if "random" not in c:
        return {}
    target, spent = c["random"]["mean"][-1], c["random"]["labels"][-1]
    out: dict[str, float | None] = {}
    for name, curve in c.items():
        reach = labels_to_reach(curve, target)
        out[name] = None if reach is None else reach / spent
    return out


def _plot(path: Path, c: dict[str, dict[str, list[float]]], metric: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for name, curve in c.items():
        x, m, s = (np.array(curve[k]) for k in ("labels", "mean", "std"))
        ax.plot(x, m, marker="o", label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.set_xlabel("frames labeled by the curator")
    ax.set_ylabel(f"{metric} on held-out people")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return render.save_figure(fig, path)


def _write(wh, eid, version, training, settings, rounds) -> ActiveLearningResult:
    metric = training.task.headline
    c = curves(rounds, metric)
    saving = savings(c)
    folder = wh.home / "reports" / version / eid
    doc = render.Doc([])
    doc.h(1, "Does the review queue spend a curator's labels well? Active learning, simulated")
    doc.ul(
        [
            f"Dataset version: {version}",
            f"Metric: {metric} on each fold's held-out people, mean ± std over {settings.seeds} seeds",
            f"{settings.initial} random frames first, then {settings.rounds} rounds of {settings.per_round} "
            "frames per strategy; the curator answers with the gold labels; the model is retrained each round",
        ]
    )
    doc.h(2, "Labels to reach random sampling's final figure")
    doc.table(
        ["strategy", "final " + metric, "labels to reach random's final", "share of random's labels"],
        [
            [
                name,
                f"{curve['mean'][-1]:.3f} ± {curve['std'][-1]:.3f}",
                "-" if saving.get(name) is None else f"{saving[name] * c['random']['labels'][-1]:.0f}",
                "never" if saving.get(name) is None else f"{render.pct(saving[name])} %",
            ]
            for name, curve in c.items()
        ],
    )
    doc.img("curves.png", f"{metric} against labels spent, one curve per strategy (mean ± std over seeds)")
    doc.h(2, "Every round")
    names = list(c)
    doc.table(
        ["labels"] + names,
        [
            [f"{c[names[0]]['labels'][i]:.0f}"]
            + [f"{c[n]['mean'][i]:.3f} ± {c[n]['std'][i]:.3f}" for n in names]
            for i in range(len(c[names[0]]["labels"]))
        ],
    )
    report = render.write_folder(
        folder, doc, "Active learning, simulated", {"curves.png": lambda p: _plot(p, c, metric)}
    )
    settings.save(folder)
    payload: dict[str, Any] = {
        "experiment_id": eid,
        "dataset_version": version,
        "training": training.to_dict(),
        "metric": metric,
        "curves": c,
        "saving": saving,
        "rounds": [
            {"strategy": r.strategy, "seed": r.seed, "fold": r.fold, "round": r.round, "labels": r.labels}
            for r in rounds
        ],
    }
    atomic_write_bytes(folder / "result.json", json.dumps(payload, indent=1).encode())
    return ActiveLearningResult(eid, version, metric, rounds, c, saving, report, folder)
