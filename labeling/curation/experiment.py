"""Does pseudo-labeling help? (the future work of the transfer-learning AU papers): the AU model
trained on gold labels only and on gold + pseudo labels, on the same subject-exclusive folds, scored
on the same held-out gold faces.

    result = pseudo_label_experiment(wh, version, AUTrainingSettings(...), PseudoExperimentSettings())
    print(result.summary())        # Avg.F1 gold vs gold + pseudo; report in result.report["markdown"]

Per fold (the gold faces' subject-exclusive folds, `models.data.group_kfold`):
1. the gold arm trains on the fold's gold training people (early stopping on its validation people);
2. that model is the fold's teacher: its two thresholds per AU are chosen on its validation people
   (`labeling.curation.pseudo.pseudo_thresholds`, the production pseudo-labeler's rule) and it labels the
   faces without a gold or human AU label (FER-2013, scraped faces): present above the upper cut,
   absent below the lower, unknown between them;
3. the gold + pseudo arm trains on the same gold people plus every face with at least one pseudo
   AU, its unknown AUs masked out of the loss (`models.losses.bce`), with the same validation people.
Both arms are tested on the fold's held-out gold people only. The teacher is the fold's own model,
never the production model: that one has seen the test people, and its pseudo labels would carry
them into the gold + pseudo arm.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from labeling.curation.pseudo import STRONG_SOURCES, Cut, au_pseudo_targets, pseudo_thresholds
from labeling.curation.settings import PseudoExperimentSettings
from models.data import Faces, decode_crops, group_kfold, validation_split
from models.evaluation import overall
from models.predictions import FoldPredictions
from models.render import pct
from models.report import au_side_by_side_report, evaluate_folds
from models.settings import AUTrainingSettings
from models.train import fit, fold_predictions, predict_probabilities
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes
from warehouse.errors import ConfigError
from warehouse.hashing import stable_id
from warehouse.settings import Settings
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)
ARMS = ("gold", "gold + pseudo")


@dataclass
class PseudoExperiment:
    experiment_id: str
    dataset_version: str
    metric: str  # the training settings' headline (avg_f1 or avg_f1_pooled)
    scores: dict[str, float]  # arm -> headline on the held-out gold faces
    per_au_f1: dict[str, dict[str, float]]  # arm -> AU -> F1 pooled over the folds
    folds: dict[str, list[FoldPredictions]]
    pseudo_per_fold: list[dict[str, Any]] = field(default_factory=list)  # what each teacher added
    report: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def gain(self) -> float:
        """gold + pseudo minus gold, in the headline metric."""
        return self.scores[ARMS[1]] - self.scores[ARMS[0]]

    def summary(self) -> str:
        added = sum(f["faces"] for f in self.pseudo_per_fold)
        return (
            f"{self.experiment_id}: {self.metric} gold {self.scores[ARMS[0]]:.3f}, gold + pseudo "
            f"{self.scores[ARMS[1]]:.3f} ({self.gain:+.3f}); {added} pseudo-labeled faces over "
            f"{len(self.pseudo_per_fold)} folds"
        )


def experiment_id(
    version: str, training: AUTrainingSettings, settings: Settings, kind: str = "au-pseudo-experiment"
) -> str:
    """`<kind>-<hash>`: same version + same settings -> same id (a re-run replaces its report, never
    duplicates). Every AU experiment of labeling.curation names its report folder so."""
    key = json.dumps([training.to_dict(), settings.model_dump(mode="json")], sort_keys=True)
    return f"{kind}-{stable_id(version, key)[:10]}"


def experiment_faces(
    wh: Warehouse, version: str, training: AUTrainingSettings, max_unlabeled: int
) -> tuple[Faces, np.ndarray, np.ndarray]:
    """The version's faces at the network's input: (faces, gold indices, unlabeled indices). Gold
    faces carry every AU of the task from a gold or human label; the others' targets are NaN until
    a teacher labels them. At most `max_unlabeled` of those, a fixed choice by crop id hash.

    Raises:
        ValueError: the version has no gold AU faces.
    """
    task, network = training.task, training.network()
    manifest = read_manifest(wh, version)
    source = manifest.column("au_source").to_pylist()
    complete = np.logical_and.reduce(
        [manifest[c].is_valid().to_numpy(zero_copy_only=False) for c in task.columns]
    )
    strong = np.array([s in STRONG_SOURCES for s in source], bool)
    is_gold = complete & strong
    if not is_gold.any():
        raise ValueError(f"dataset version {version} has no face with gold or human labels of {task.labels}")
    unlabeled = np.flatnonzero(~strong)
    if len(unlabeled) > max_unlabeled:
        ids = manifest.column("crop_id").to_pylist()
        rank = sorted(unlabeled, key=lambda i: stable_id("pseudo-experiment", ids[i]))
        unlabeled = np.sort(np.array(rank[:max_unlabeled]))
    gold_rows, pool_rows = manifest.take(np.flatnonzero(is_gold)), manifest.take(unlabeled)
    column = "gray_media_path" if network.channels == 1 else "media_path"
    crop_ids = gold_rows["crop_id"].to_pylist() + pool_rows["crop_id"].to_pylist()
    images = decode_crops(
        wh.home,
        gold_rows[column].to_pylist() + pool_rows[column].to_pylist(),
        crop_ids,
        network.image_size,
        network.channels,
        wh.home / "cache",
    )
    targets = np.concatenate(
        [task.targets(gold_rows), np.full((pool_rows.num_rows, len(task.labels)), np.nan, np.float32)]
    )
    groups = gold_rows["group"].to_pylist() + pool_rows["group"].to_pylist()
    splits = gold_rows["split"].to_pylist() + pool_rows["split"].to_pylist()
    faces = Faces(
        task=task.name,
        labels=task.labels,
        images=images,
        targets=targets,
        groups=np.array(groups, dtype=object).astype(str),
        splits=np.array(splits, dtype=object).astype(str),
        crop_ids=crop_ids,
    )
    n_gold = gold_rows.num_rows
    return faces, np.arange(n_gold), np.arange(n_gold, len(crop_ids))


def pseudo_label_experiment(
    wh: Warehouse,
    version: str,
    training: AUTrainingSettings,
    settings: PseudoExperimentSettings | None = None,
) -> PseudoExperiment:
    """Run the experiment of the module docstring on `version`; write the side-by-side report, the
    settings and result.json to `<home>/reports/<version>/<experiment id>/`.

    Raises:
        ConfigError: a loss other than bce (the masked loss of partial pseudo labels).
        ValueError: no gold AU faces, or fewer gold groups than folds.
    """
    settings = settings or PseudoExperimentSettings()
    if training.loss != "bce":
        raise ConfigError(
            f"loss {training.loss}: the pseudo-label experiment trains with bce (unknown AUs masked)"
        )
    eid = experiment_id(version, training, settings)
    faces, gold, pool = experiment_faces(wh, version, training, settings.max_unlabeled)
    log.info(
        f"{eid}: {len(gold)} gold faces of {len(set(faces.groups[gold]))} groups, {len(pool)} unlabeled faces"
    )
    results: dict[str, list[FoldPredictions]] = {arm: [] for arm in ARMS}
    added: list[dict[str, Any]] = []
    k = training.folds
    for fold, (train_part, test_part) in enumerate(group_kfold(faces.groups[gold], k)):
        train_all, test_idx = gold[train_part], gold[test_part]
        train_idx, val_idx, how = validation_split(faces.groups, train_all, seed=training.seed)
        log.info(f"fold {fold + 1}/{k}: gold arm, {len(train_idx)} train, {len(val_idx)} val ({how})")
        teacher = fit(faces, train_idx, val_idx, training)
        results[ARMS[0]].append(fold_predictions(faces, fold, teacher, val_idx, test_idx, training))
        val_fold = FoldPredictions(
            fold,
            faces.labels,
            faces.targets[val_idx].astype(bool),
            predict_probabilities(teacher.model, faces, val_idx, training),
            None,
            [],
        )
        cuts = pseudo_thresholds([val_fold], settings.target_precision, settings.min_support)
        pseudo = au_pseudo_targets(
            predict_probabilities(teacher.model, faces, pool, training), faces.labels, cuts
        )
        labeled = ~np.isnan(pseudo).all(1)
        student_targets = faces.targets.copy()
        student_targets[pool] = pseudo
        student_faces = replace(faces, targets=student_targets)
        added.append(_added(fold, cuts, pseudo, labeled, faces.labels))
        log.info(
            f"fold {fold + 1}/{k}: the teacher labels {int(labeled.sum())} of {len(pool)} faces; "
            f"gold + pseudo arm, {len(train_idx) + int(labeled.sum())} train"
        )
        student = fit(student_faces, np.concatenate([train_idx, pool[labeled]]), val_idx, training)
        results[ARMS[1]].append(fold_predictions(student_faces, fold, student, val_idx, test_idx, training))
    return _write(wh, eid, version, training, settings, results, added)


def _added(
    fold: int, cuts: dict[str, Cut | None], pseudo: np.ndarray, labeled: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    return {
        "fold": fold,
        "faces": int(labeled.sum()),
        "present": {lab: int((pseudo[:, j] == 1).sum()) for j, lab in enumerate(labels)},
        "absent": {lab: int((pseudo[:, j] == 0).sum()) for j, lab in enumerate(labels)},
        "unmet": [lab for lab, c in cuts.items() if c is None],
    }


def _write(
    wh: Warehouse,
    eid: str,
    version: str,
    training: AUTrainingSettings,
    settings: PseudoExperimentSettings,
    results: dict[str, list[FoldPredictions]],
    added: list[dict[str, Any]],
) -> PseudoExperiment:
    task = training.task
    rows = {arm: evaluate_folds(task, folds) for arm, folds in results.items()}
    scores = {arm: overall(r, task.headline) for arm, r in rows.items()}
    per_au = {
        arm: {r["label"]: float(r["value"]) for r in rs if r["fold"] is None and r["metric"] == "f1_pooled"}
        for arm, rs in rows.items()
    }
    folder = wh.home / "reports" / version / eid
    notes = [
        f"Pseudo labels per fold from that fold's gold model, thresholds at precision "
        f"{settings.target_precision} on its validation people: "
        + "; ".join(f"fold {a['fold']}: {a['faces']} faces" for a in added),
        f"Headline ({task.headline}, %): gold {pct(scores[ARMS[0]])}, gold + pseudo {pct(scores[ARMS[1]])}",
    ]
    report = au_side_by_side_report(
        folder,
        title="Does pseudo-labeling help? gold vs gold + pseudo",
        about="one AU model per arm on the same subject-exclusive folds, tested on held-out gold faces",
        column="Labels",
        dataset_version=version,
        results=results,
        notes=notes,
    )
    settings.save(folder)
    payload = {
        "experiment_id": eid,
        "dataset_version": version,
        "training": training.to_dict(),
        "metric": task.headline,
        "scores": scores,
        "per_au_f1_pooled": per_au,
        "pseudo_per_fold": added,
    }
    atomic_write_bytes(folder / "result.json", json.dumps(payload, indent=1).encode())
    return PseudoExperiment(eid, version, task.headline, scores, per_au, results, added, report, folder)
