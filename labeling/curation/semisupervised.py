"""Fewer human labels for the same AU model? The semi-supervised protocol, in domain.

    result = semi_supervised_experiment(wh, version, AUTrainingSettings(...), SemiSupervisedSettings())
    print(result.summary())     # per label budget: Avg.F1 of the three arms, the gap closed, the paired gain

The gold DISFA people are cut into subject-exclusive test folds (`models.data.group_kfold`, as the
AU models are scored). In each fold, for each split (a seeded shuffle of the fold's training
people) and each label budget (a share of those people), the first people of the shuffle form the
labeled pool; the others' gold labels are hidden (the unlabeled pool). Three arms, tested on the
fold's held-out people:

1. labeled gold: the AU model trained on the labeled pool only;
2. labeled gold + pseudo: that model is the teacher (or, `teachers="cross-fitted"`, an ensemble of
   models each trained on the labeled people but one and validated on that one): it labels the unlabeled pool's frames
   (probabilities optionally calibrated per person, `person_norm`, and smoothed along each video's
   time axis, `smooth_frames`), hard labels
   at its two cuts per AU (`labeling.curation.pseudo.pseudo_thresholds` on its validation frames)
   or soft targets (the probabilities themselves), and a student trains on both pools; with
   `rounds` > 1 the student becomes the next round's teacher;
3. all gold: every training person with their gold labels (the ceiling; one per fold, shared by
   the splits and budgets).

Budgets are nested: a split's 40 % pool contains its 20 % pool, so the budgets compare the same
people. The headline per split is the training settings' (Avg.F1 pooled over the folds); the gap
closed is (arm 2 - arm 1) / (arm 3 - arm 1); the paired gain is arm 2 - arm 1 per (split, fold),
with its spread. The teacher never sees a test person or a hidden label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from scipy.ndimage import uniform_filter1d
from scipy.special import expit, logit

from labeling.curation.experiment import experiment_id
from labeling.curation.pseudo import au_pseudo_targets, pseudo_thresholds
from labeling.curation.settings import SemiSupervisedSettings
from models import render
from models.data import Faces, group_kfold, load_faces, validation_split
from models.evaluation import Rows, overall
from models.losses import positive_weight
from models.predictions import FoldPredictions
from models.report import evaluate_folds
from models.settings import AUTrainingSettings
from models.train import FitResult, fit, fold_predictions, predict_probabilities
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes
from warehouse.errors import ConfigError
from warehouse.hashing import stable_id
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)
LABELED, PSEUDO, CEILING = ARMS = ("labeled gold", "labeled gold + pseudo", "all gold")


@dataclass(frozen=True)
class Trial:
    """One (budget, split, fold): which people were labeled, and each arm's held-out predictions."""

    fraction: float
    split: int
    fold: int
    labeled_groups: list[str]
    unlabeled_groups: list[str]
    predictions: dict[str, FoldPredictions]  # arm -> the fold's test predictions
    pseudo: dict[str, Any]  # what the last round's teacher added


@dataclass
class SemiSupervisedResult:
    experiment_id: str
    dataset_version: str
    metric: str
    trials: list[Trial]
    table: list[dict[str, Any]]  # per budget: the arms' headline (mean, std over splits), gap, gain
    report: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    def summary(self) -> str:
        lines = [f"{self.experiment_id} ({self.metric}, {len({t.split for t in self.trials})} splits):"]
        for row in self.table:
            lines.append(
                f"  {row['fraction']:.0%} labeled: {LABELED} {row[LABELED]:.3f}, {PSEUDO} "
                f"{row[PSEUDO]:.3f}, {CEILING} {row[CEILING]:.3f}; gap closed {row['gap_closed']:.0%}; "
                f"paired gain {row['paired_gain']:+.3f} ± {row['paired_spread']:.3f}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class GoldFrames:
    """The version's gold AU faces and, per face, its place on a video's time axis."""

    faces: Faces
    video: np.ndarray  # (N,) str: the video (or group) the frame belongs to
    frame: np.ndarray  # (N,) int: its frame index (row order where the source has none)

    def smooth(self, prob: np.ndarray, idx: np.ndarray, window: int) -> np.ndarray:
        """prob (one row per idx) averaged over `window` neighbouring frames of the same video;
        frames not labeled together stay apart (each video is smoothed on its own rows)."""
        if window <= 1:
            return prob
        out = np.empty_like(prob)
        videos = self.video[idx]
        for v in np.unique(videos):
            rows = np.flatnonzero(videos == v)
            order = rows[np.argsort(self.frame[idx][rows], kind="stable")]
            out[order] = uniform_filter1d(prob[order], size=window, axis=0, mode="nearest")
        return out

    def person_normalized(self, prob: np.ndarray, idx: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """prob's logits shifted per video so that each video's median is `reference` (per AU): a
        person's own bias (a resting face that looks like AU4) taken out before thresholding."""
        z = _logit(prob)
        videos = self.video[idx]
        for v in np.unique(videos):
            rows = videos == v
            z[rows] += reference - np.median(z[rows], axis=0)
        return expit(z)


def gold_frames(wh: Warehouse, version: str, training: AUTrainingSettings) -> GoldFrames:
    """The faces whose every AU of the task is a gold label, decoded at the network's input.

    Raises:
        ValueError: the version has no gold AU faces.
    """
    task, network = training.task, training.network()
    manifest = read_manifest(wh, version)
    gold = task.select_rows(manifest.filter(pc.equal(manifest["au_source"], "gold")))
    if gold.num_rows == 0:
        raise ValueError(f"dataset version {version} has no face with gold labels of {task.labels}")
    faces = load_faces(wh.home, gold, task, network.image_size, network.channels)
    images = wh.sql(
        "SELECT image_id, coalesce(video_id, '') AS video_id, frame_index FROM images "
        "WHERE image_id IN (SELECT unnest($ids))",
        {"ids": sorted(set(gold["image_id"].to_pylist()))},
    )
    where = {i: (v, f) for i, v, f in zip(*(images[c].to_pylist() for c in images.column_names))}
    keys = [where.get(i, ("", None)) for i in gold["image_id"].to_pylist()]
    video = np.array([f"{g}/{v}" for g, (v, _) in zip(faces.groups, keys)], dtype=object).astype(str)
    frame = np.array([k if f is None else f for k, (_, f) in enumerate(keys)], dtype=np.int64)
    return GoldFrames(faces, video, frame)


def labeled_people(people: list[str], fraction: float, split: int, fold: int, seed: int) -> list[str]:
    """The labeled pool of one split: the first `fraction` of a seeded shuffle of the fold's
    training people (at least 2, so the teacher has someone to validate on; nested across budgets)."""
    ranked = sorted(people, key=lambda g: stable_id("semi-supervised", seed, split, fold, g))
    return ranked[: min(len(ranked), max(2, round(fraction * len(ranked))))]


@dataclass(frozen=True)
class Teacher:
    """One model that labels the pool: what it trained on (its positive weighting) and the
    labeled frames it was validated on (where the cuts are chosen)."""

    fit: FitResult
    train_idx: np.ndarray
    val_idx: np.ndarray


def pseudo_targets(
    frames: GoldFrames,
    teachers: list[Teacher],
    pool: np.ndarray,
    training: AUTrainingSettings,
    settings: SemiSupervisedSettings,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The teachers' targets for the pool's frames, (len(pool), K) float32 with NaN for unknown,
    and what they added: their mean probability; hard cuts chosen on each teacher's own
    validation frames pooled. Only the labeled frames' gold (train_idx, val_idx) is read."""
    faces = frames.faces

    def raw(t: Teacher, idx: np.ndarray) -> np.ndarray:
        # A pos-weighted BCE teaches odds `pos_weight` times the frequency's: divided back out, the
        # teacher's probabilities are frequencies again (what a soft target must be).
        z = _logit(predict_probabilities(t.fit.model, faces, idx, training))
        if training.pos_weight:
            z = z - np.log(np.maximum(positive_weight(faces.targets[t.train_idx]), 1e-6))
        return expit(z)

    def prob(p: np.ndarray, idx: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        if reference is not None:
            p = frames.person_normalized(p, idx, reference)
        return frames.smooth(p, idx, settings.smooth_frames)

    reference = None
    if settings.person_norm:
        labeled = np.unique(np.concatenate([t.train_idx for t in teachers]))
        reference = np.median(_logit(np.mean([raw(t, labeled) for t in teachers], axis=0)), axis=0)
    pool_prob = prob(np.mean([raw(t, pool) for t in teachers], axis=0), pool, reference)
    if settings.targets == "soft":
        return pool_prob.astype(np.float32), {
            "targets": "soft",
            "faces": len(pool),
            "teachers": len(teachers),
        }
    val = [
        FoldPredictions(
            k,
            faces.labels,
            faces.targets[t.val_idx].astype(bool),
            prob(raw(t, t.val_idx), t.val_idx, reference),
            None,
            [],
        )
        for k, t in enumerate(teachers)
    ]
    cuts = pseudo_thresholds(val, settings.target_precision, settings.min_support)
    out = au_pseudo_targets(pool_prob, faces.labels, cuts)
    return out, {
        "targets": "hard",
        "teachers": len(teachers),
        "faces": int((~np.isnan(out).all(1)).sum()),
        "present": int((out == 1).sum()),
        "absent": int((out == 0).sum()),
        "unknown": int(np.isnan(out).sum()),
        "no_cut": [lab for lab, c in cuts.items() if c is None],
    }


def cross_fitted_teachers(faces: Faces, labeled: np.ndarray, training: AUTrainingSettings) -> list[Teacher]:
    """One teacher per labeled person left out (at most 3 folds of the labeled people): each
    validated, and its cuts chosen, on people it never trained on, as the pool's people are."""
    k = min(3, len(np.unique(faces.groups[labeled])))
    teachers = []
    for train_part, val_part in group_kfold(faces.groups[labeled], k):
        tr, va = labeled[train_part], labeled[val_part]
        teachers.append(Teacher(fit(faces, tr, va, training), tr, va))
    return teachers


def label_quality(targets: np.ndarray, hidden_gold: np.ndarray) -> dict[str, float]:
    """How right the pseudo labels are, against the gold they stand in for (a report figure only):
    the precision of present and of absent labels (soft targets: at 0.5) and the share of
    (frame, AU) pairs labeled."""
    known = ~np.isnan(targets)
    present, absent = known & (targets >= 0.5), known & (targets < 0.5)
    gold = hidden_gold.astype(bool)
    return {
        "precision_present": float(gold[present].mean()) if present.any() else float("nan"),
        "precision_absent": float((~gold[absent]).mean()) if absent.any() else float("nan"),
        "coverage": float(known.mean()) if known.size else 0.0,
    }


def _logit(p: np.ndarray) -> np.ndarray:
    """logit of probabilities kept off 0 and 1 (a saturated sigmoid would give infinities)."""
    return logit(np.clip(p, 1e-6, 1 - 1e-6))


def semi_supervised_experiment(
    wh: Warehouse,
    version: str,
    training: AUTrainingSettings,
    settings: SemiSupervisedSettings | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> SemiSupervisedResult:
    """Run the protocol of the module docstring on `version`; write the report, the settings and
    result.json to `<home>/reports/<version>/<experiment id>/`. `on_trial` sees every finished
    (budget, split, fold).

    Raises:
        ConfigError: a loss other than bce (pseudo labels leave AUs unknown, masked out of bce).
        ValueError: no gold AU faces, or too few gold people for the folds.
    """
    settings = settings or SemiSupervisedSettings()
    if training.loss != "bce":
        raise ConfigError(f"loss {training.loss}: the semi-supervised experiment trains with bce")
    eid = experiment_id(version, training, settings, kind="au-semi-supervised")
    frames = gold_frames(wh, version, training)
    faces = frames.faces
    k = training.folds
    people = np.unique(faces.groups)
    log.info(f"{eid}: {len(faces)} gold frames of {len(people)} people, {k} folds")
    trials: list[Trial] = []
    for fold, (train_all, test_idx) in enumerate(group_kfold(faces.groups, k)):
        train_people = sorted(set(faces.groups[train_all].tolist()))
        tr, va, how = validation_split(faces.groups, train_all, seed=training.seed)
        log.info(f"fold {fold + 1}/{k}: {CEILING}, {len(tr)} train, {len(va)} val ({how})")
        ceiling = fold_predictions(faces, fold, fit(faces, tr, va, training), va, test_idx, training)
        for split in range(settings.splits):
            for fraction in settings.label_fractions:
                chosen = labeled_people(train_people, fraction, split, fold, training.seed)
                trial = _trial(frames, training, settings, fold, split, fraction, chosen, train_all, test_idx)
                trial.predictions[CEILING] = ceiling
                trials.append(trial)
                if on_trial is not None:
                    on_trial(trial)
    return _write(wh, eid, version, training, settings, trials)


def _trial(
    frames: GoldFrames,
    training: AUTrainingSettings,
    settings: SemiSupervisedSettings,
    fold: int,
    split: int,
    fraction: float,
    chosen: list[str],
    train_all: np.ndarray,
    test_idx: np.ndarray,
) -> Trial:
    faces = frames.faces
    is_labeled = np.isin(faces.groups[train_all], chosen)
    labeled, pool = train_all[is_labeled], train_all[~is_labeled]
    tr, va, how = validation_split(faces.groups, labeled, seed=training.seed)
    tag = f"fold {fold} split {split} {fraction:.0%}"
    log.info(f"{tag}: {LABELED}, people {chosen}: {len(tr)} train, {len(va)} val ({how})")
    model = fit(faces, tr, va, training)
    predictions = {LABELED: fold_predictions(faces, fold, model, va, test_idx, training)}
    student_faces, added = faces, {"faces": 0}
    teachers = [Teacher(model, tr, va)]
    if settings.teachers == "cross-fitted" and len(pool):
        teachers = cross_fitted_teachers(faces, labeled, training)
    for round_ in range(settings.rounds if len(pool) else 0):
        targets, added = pseudo_targets(frames, teachers, pool, training, settings)
        added = {**added, **label_quality(targets, faces.targets[pool])}  # scored, never trained on
        known = ~np.isnan(targets).all(1)
        student_targets = faces.targets.copy()
        student_targets[pool] = targets  # the hidden gold labels are never read
        student_faces = replace(faces, targets=student_targets)
        log.info(f"{tag}: round {round_ + 1}, the teacher labels {int(known.sum())} of {len(pool)} frames")
        model = fit(student_faces, np.concatenate([tr, pool[known]]), va, training)
        teachers = [Teacher(model, tr, va)]  # the next round's teacher
    predictions[PSEUDO] = (
        fold_predictions(student_faces, fold, model, va, test_idx, training)
        if len(pool)
        else predictions[LABELED]
    )
    unlabeled = sorted(set(faces.groups[pool].tolist()))
    return Trial(fraction, split, fold, sorted(chosen), unlabeled, predictions, added)


# ---- the figures ------------------------------------------------------------------------------
def _split_rows(trials: list[Trial], arm: str) -> list[dict]:
    """Evaluation rows of one split's folds (pooled figures over them)."""
    return evaluate_folds("au", sorted((t.predictions[arm] for t in trials), key=lambda f: f.fold))


def _headline(trials: list[Trial], arm: str, metric: str) -> float:
    return overall(_split_rows(trials, arm), metric)


def _fold_f1(t: Trial, arm: str) -> float:
    return Rows(evaluate_folds("au", [t.predictions[arm]]))("avg_f1", fold=t.fold)


def budget_table(trials: list[Trial], metric: str) -> list[dict[str, Any]]:
    """Per label budget: each arm's headline (mean and std over splits), the share of the gap
    to the ceiling that the pseudo labels close, and the paired gain per (split, fold)."""
    out = []
    for fraction in sorted({t.fraction for t in trials}):
        at = [t for t in trials if t.fraction == fraction]
        splits = sorted({t.split for t in at})
        per_split = {
            arm: np.array([_headline([t for t in at if t.split == s], arm, metric) for s in splits])
            for arm in ARMS
        }
        gap = per_split[CEILING] - per_split[LABELED]
        closed = np.where(
            gap > 0, (per_split[PSEUDO] - per_split[LABELED]) / np.where(gap > 0, gap, 1), np.nan
        )
        paired = np.array([_fold_f1(t, PSEUDO) - _fold_f1(t, LABELED) for t in at])
        row: dict[str, Any] = {"fraction": fraction, "splits": len(splits), "trials": len(at)}
        for arm in ARMS:
            row[arm], row[f"{arm} std"] = float(per_split[arm].mean()), float(per_split[arm].std())
        row["gap_closed"] = _nanmean(closed)
        row["gap_closed_per_split"] = [float(c) for c in closed]
        row["paired_gain"], row["paired_spread"] = float(paired.mean()), float(paired.std())
        row["people_labeled"] = float(np.mean([len(t.labeled_groups) for t in at]))
        for key in ("precision_present", "precision_absent", "coverage"):
            row[f"pseudo_{key}"] = _nanmean(np.array([t.pseudo.get(key, np.nan) for t in at], float))
        out.append(row)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def per_au_table(trials: list[Trial]) -> dict[float, dict[str, dict[str, float]]]:
    """budget -> arm -> AU -> F1 pooled over the folds, mean over the splits."""
    out: dict[float, dict[str, dict[str, float]]] = {}
    for fraction in sorted({t.fraction for t in trials}):
        at = [t for t in trials if t.fraction == fraction]
        out[fraction] = {}
        for arm in ARMS:
            per_split = [
                Rows(_split_rows([t for t in at if t.split == s], arm)) for s in sorted({t.split for t in at})
            ]
            labels = at[0].predictions[arm].labels
            out[fraction][arm] = {
                lab: float(np.mean([r("f1_pooled", lab) for r in per_split])) for lab in labels
            }
    return out


def _write(
    wh: Warehouse,
    eid: str,
    version: str,
    training: AUTrainingSettings,
    settings: SemiSupervisedSettings,
    trials: list[Trial],
) -> SemiSupervisedResult:
    metric = training.task.headline
    table = budget_table(trials, metric)
    per_au = per_au_table(trials)
    folder = wh.home / "reports" / version / eid
    doc = render.Doc([])
    doc.h(1, "Fewer human labels for the same AU model? The semi-supervised protocol")
    doc.ul(
        [
            f"Dataset version: {version}",
            f"Metric: {metric} on each fold's held-out people; mean ± std over {settings.splits} splits",
            f"Pseudo labels: {settings.targets} targets, teacher probabilities smoothed over "
            f"{settings.smooth_frames or 1} frame(s), {settings.rounds} round(s) of self-training"
            + (f", cuts at precision {settings.target_precision}" if settings.targets == "hard" else ""),
            "Gap closed: (gold + pseudo - labeled gold) / (all gold - labeled gold), per split. "
            "Paired gain: gold + pseudo - labeled gold in Avg.F1 per (split, fold), mean ± std. "
            "Pseudo precision: the pseudo labels (soft ones at 0.5) scored against the hidden gold, "
            "which no arm trains on.",
        ]
    )
    doc.h(2, "Per label budget")
    doc.table(
        ["labeled people", *ARMS, "gap closed", "paired gain", "pseudo precision present / absent"],
        [
            [
                f"{r['fraction']:.0%} (~{r['people_labeled']:.1f} people)",
                *(f"{r[a]:.3f} ± {r[a + ' std']:.3f}" for a in ARMS),
                f"{render.pct(r['gap_closed'])} %" if np.isfinite(r["gap_closed"]) else "-",
                f"{r['paired_gain']:+.3f} ± {r['paired_spread']:.3f}",
                f"{render.fmt(r['pseudo_precision_present'])} / {render.fmt(r['pseudo_precision_absent'])}",
            ]
            for r in table
        ],
    )
    doc.img("budgets.png", f"{metric} per label budget and arm, mean ± std over splits")
    doc.h(2, "Per AU (F1 pooled over the folds, mean over splits)")
    labels = next(iter(next(iter(per_au.values())).values())).keys()
    doc.table(
        ["AU"] + [f"{f:.0%}: {a}" for f in per_au for a in ARMS],
        [[lab] + [render.fmt(per_au[f][a][lab]) for f in per_au for a in ARMS] for lab in labels],
    )
    doc.h(2, "Every (budget, split, fold)")
    doc.table(
        ["budget", "split", "fold", "labeled people", *ARMS, "gain", "pseudo-labeled frames"],
        [
            [
                f"{t.fraction:.0%}",
                str(t.split),
                str(t.fold),
                ", ".join(g.split(":", 1)[-1] for g in t.labeled_groups),
                *(render.fmt(_fold_f1(t, a)) for a in ARMS),
                f"{_fold_f1(t, PSEUDO) - _fold_f1(t, LABELED):+.3f}",
                str(t.pseudo.get("faces", 0)),
            ]
            for t in trials
        ],
    )
    fractions = [f"{r['fraction']:.0%}" for r in table]
    series = {a: ([r[a] for r in table], [r[a + " std"] for r in table]) for a in ARMS}
    plots = {"budgets.png": lambda p: render.plot_bars(p, fractions, series, metric)}
    report = render.write_folder(folder, doc, "Semi-supervised protocol", plots)
    settings.save(folder)
    payload = {
        "experiment_id": eid,
        "dataset_version": version,
        "training": training.to_dict(),
        "metric": metric,
        "budgets": table,
        "per_au_f1_pooled": {f"{f:g}": v for f, v in per_au.items()},
        "trials": [
            {
                "fraction": t.fraction,
                "split": t.split,
                "fold": t.fold,
                "labeled": t.labeled_groups,
                "unlabeled": t.unlabeled_groups,
                "avg_f1": {a: _fold_f1(t, a) for a in ARMS},
                "pseudo": t.pseudo,
            }
            for t in trials
        ],
    }
    atomic_write_bytes(folder / "result.json", json.dumps(payload, indent=1).encode())
    return SemiSupervisedResult(eid, version, metric, trials, table, report, folder)
