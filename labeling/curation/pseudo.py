"""Pseudo-labels: the production model labels every usable face that has no human or gold label
for the task, where its out-of-fold predictions say it is precise enough.

    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9))
    print(report.summary())

Thresholds (`pseudo_thresholds`) are chosen on the model's out-of-fold predictions
(predictions.npz: every face scored by a fold model that never saw its person), never on the
faces being labeled. Per AU, two: a face with probability >= `upper` is labeled present, <= `lower`
absent, none in between; `upper` is the lowest cut whose faces above it are at least
`target_precision` truly present (the most coverage at that precision), `lower` the highest cut
below `upper` whose faces below it are at least `target_precision` truly absent. A side whose
target cannot be met (with at least `min_support` held-out faces) gets no labels; an AU with
neither side gets none, and the report says so. Emotion: per predicted class, one cut on the
softmax's top probability, chosen the same way (its precision: the top class is the true one).

Where the cuts hold (`source_cuts`): out-of-fold predictions measure precision on the model's own
held-out people (DISFA's for the AU model), not on 48 px FER-2013 crops or small scraped faces. So
each source's faces are labeled with cuts chosen on that source's own human-labeled faces (the
Label Studio / FiftyOne answers that came back) once it has `min_verified_faces` of them
(calibration "human:<source>:<n>", verified; a cut must reach the target at the lower bound of its
precision, `confidence`, since a few answers overstate it); before that with the out-of-fold cuts,
verified only for the sources of the held-out people. Unverified labels are written (curators see them) but
never reach a dataset version (warehouse.versions).

Each label row carries the probability, the model id (annotator), the threshold it passed, its
calibration and whether it is verified;
label_source "pseudo". Only the production model's pseudo labels count in a dataset version
(warehouse.precedence). Labels are keyed (image, face, AU, source, model): re-running writes
nothing new, and a changed probability supersedes the old row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.stats import beta

from labeling.curation.reports import write_pseudo_report
from labeling.curation.settings import PseudoLabelSettings
from models.pipeline import ModelRun, load_run
from models.predict import Predictor
from models.predictions import FoldPredictions
from models.registry import production_model
from models.tasks import AUTask, EmotionTask, Task, get_task
from warehouse import Warehouse
from warehouse.atomic import atomic_path, atomic_write_bytes
from warehouse.errors import ConfigError
from warehouse.rejects import Reject
from warehouse.schemas import TABLES
from warehouse.versions import list_versions, read_manifest

log = logging.getLogger(__name__)
STRONG_SOURCES = ("human", "gold")  # a face with these for the task is never pseudo-labeled


@dataclass(frozen=True)
class Cut:
    """One label's thresholds and what they reach on the out-of-fold predictions."""

    lower: float | None  # absent when probability <= lower (AU); None: no absent labels
    upper: float | None  # present (AU) / this class (emotion) when probability >= upper
    precision_lower: float | None = None
    precision_upper: float | None = None
    coverage: float = 0.0  # share of the held-out faces that would get a label
    support_lower: int = 0  # held-out faces at or below `lower` (what its precision is measured on)
    support_upper: int = 0  # held-out faces at or above `upper`


def precision_bound(correct: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """The one-sided lower confidence bound on a precision of `correct` right of `n`
    (Clopper-Pearson); the point estimate at `confidence` 0."""
    if confidence <= 0:
        return correct / n
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(beta.ppf(1 - confidence, correct, n - correct + 1))


def _best_cut(
    scores: np.ndarray, correct: np.ndarray, target: float, min_support: int, confidence: float = 0.0
) -> tuple[float, float, int] | None:
    """Over the faces sorted by `scores` descending: the lowest cut t with precision(correct |
    score >= t) >= target (its lower bound at `confidence`, so a cut chosen on few faces is not
    taken on luck) and at least `min_support` faces; (t, precision, n) or None. Ties at a cut are
    all in or all out."""
    if len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(np.float64)
    n = np.arange(1, len(s) + 1)
    right = np.cumsum(c)
    precision = right / n
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a cut sits after the last face of equal score
    passes = precision_bound(right, n, confidence) >= target
    ok = np.flatnonzero(last_of_tie & passes & (n >= min_support))
    if len(ok) == 0:
        return None
    n = int(ok[-1]) + 1
    return float(s[n - 1]), float(precision[n - 1]), n


def pseudo_thresholds(
    folds: Sequence[FoldPredictions],
    target_precision: float = 0.9,
    min_support: int = 10,
    confidence: float = 0.0,
) -> dict[str, Cut | None]:
    """Per label, the thresholds of the module docstring from out-of-fold predictions (all folds
    pooled); None for a label with no side that reaches `target_precision` (its lower bound at
    `confidence`, when > 0)."""
    labels = list(folds[0].labels)
    prob = np.concatenate([f.prob for f in folds])
    y = np.concatenate([f.y_true for f in folds])
    out: dict[str, Cut | None] = {}
    if y.ndim == 2:  # AUs: multi-label
        for k, label in enumerate(labels):
            p, t = prob[:, k].astype(np.float64), y[:, k].astype(bool)
            up = _best_cut(p, t, target_precision, min_support, confidence)
            below = p < up[0] if up else np.ones(len(p), bool)
            low = _best_cut(-p[below], ~t[below], target_precision, min_support, confidence)
            if up is None and low is None:
                out[label] = None
                continue
            covered = (p >= up[0] if up else 0) | (p <= -low[0] if low else 0)
            out[label] = Cut(
                lower=-low[0] if low else None,
                upper=up[0] if up else None,
                precision_lower=low[1] if low else None,
                precision_upper=up[1] if up else None,
                coverage=float(np.mean(covered)),
                support_lower=low[2] if low else 0,
                support_upper=up[2] if up else 0,
            )
        return out
    top, pred = prob.max(1).astype(np.float64), prob.argmax(1)
    for k, label in enumerate(labels):
        mine = pred == k
        up = _best_cut(top[mine], y[mine] == k, target_precision, min_support, confidence)
        out[label] = (
            None
            if up is None
            else Cut(
                lower=None,
                upper=up[0],
                precision_upper=up[1],
                coverage=up[2] / max(len(top), 1),
                support_upper=up[2],
            )
        )
    return out


def au_decisions(prob: np.ndarray, cut: Cut | None) -> tuple[np.ndarray, np.ndarray]:
    """One AU's pseudo labels: (present, absent) masks of the probabilities; neither between the
    thresholds, nor where the AU has no cut."""
    present = prob >= cut.upper if cut and cut.upper is not None else np.zeros(len(prob), bool)
    absent = prob <= cut.lower if cut and cut.lower is not None else np.zeros(len(prob), bool)
    return present, absent & ~present


def au_pseudo_targets(prob: np.ndarray, labels: Sequence[str], cuts: dict[str, Cut | None]) -> np.ndarray:
    """Training targets of pseudo labels, (N, K) float32: 1 present, 0 absent, NaN unknown (between
    the thresholds, or an AU without a cut)."""
    out = np.full(prob.shape, np.nan, np.float32)
    for k, label in enumerate(labels):
        present, absent = au_decisions(prob[:, k], cuts.get(label))
        out[present, k], out[absent, k] = 1.0, 0.0
    return out


# ---- where the cuts hold ---------------------------------------------------------------------
OUT_OF_FOLD = "out-of-fold"


@dataclass(frozen=True)
class SourceCuts:
    """The cuts a source's faces are labeled with, where their precision was measured, and
    whether that was on faces of the source itself."""

    cuts: dict[str, Cut | None]
    calibration: str  # "out-of-fold" (the model's held-out people) or "human:<source>:<faces>"
    verified: bool


def held_out_sources(folds: Sequence[FoldPredictions]) -> set[str]:
    """The sources of the people the model's held-out predictions were made on (groups are
    "<source>:<id>")."""
    return {str(g).split(":", 1)[0] for f in folds for g in f.groups}


def source_cuts(
    wh: Warehouse,
    task: Task,
    predictor: Predictor,
    run: ModelRun,
    out_of_fold: dict[str, Cut | None],
    manifest: pa.Table,
    sources: Sequence[str],
    settings: PseudoLabelSettings,
) -> dict[str, SourceCuts]:
    """Per source of the faces to label: its own cuts, chosen on the model's predictions of the
    source's human-labeled faces of the version (`manifest`) once it has `min_verified_faces` of
    them (verified); else `out_of_fold` (the cuts of the model's held-out predictions), verified
    only when the model's held-out people came from that source.

    The model must not have trained on the faces its cuts are chosen on: a face it was tested on
    out of fold counts with that prediction, a face labeled after its dataset version is predicted
    now, and a face it trained on with no held-out prediction is left out."""
    held_out = held_out_sources(run.folds)
    held_out_prob = {c: f.prob[i] for f in run.folds for i, c in enumerate(f.crop_ids)}
    trained = set(task.select_rows(read_manifest(wh, run.dataset_version))["crop_id"].to_pylist())
    human = task.select_rows(manifest.filter(pc.equal(manifest[task.source_column], "human")))
    found: dict[str, SourceCuts] = {}
    for source in sorted(set(sources)):
        rows = human.filter(pc.equal(human["source"], source))
        ids = rows["crop_id"].to_pylist()
        unseen = rows.filter(pa.array([c not in trained for c in ids], pa.bool_()))
        fresh: dict[str, np.ndarray] = {}
        if unseen.num_rows:
            predicted, _ = face_predictions(wh, predictor, unseen, settings.batch_size)
            prob = np.stack([predicted[lab].to_numpy(zero_copy_only=False) for lab in predictor.labels], 1)
            fresh = dict(zip(predicted["crop_id"].to_pylist(), prob, strict=True))
        usable = [i for i, c in enumerate(ids) if c in fresh or c in held_out_prob]
        if len(usable) >= settings.min_verified_faces:
            rows = rows.take(pa.array(usable, pa.int64()))
            prob = np.stack([fresh.get(c, held_out_prob.get(c)) for c in rows["crop_id"].to_pylist()])
            fold = FoldPredictions(
                0, list(predictor.labels), task.true_labels(task.targets(rows)), prob, None, []
            )
            cuts = pseudo_thresholds(
                [fold], settings.target_precision, settings.min_support, settings.confidence
            )
            found[source] = SourceCuts(cuts, f"human:{source}:{rows.num_rows}", True)
        else:
            found[source] = SourceCuts(out_of_fold, OUT_OF_FOLD, source in held_out)
        log.info(
            "%s faces: cuts from %s (%s)",
            source,
            found[source].calibration,
            "verified"
            if found[source].verified
            else f"unverified: {len(usable)} human-labeled faces the model did not train on, "
            f"{settings.min_verified_faces} needed",
        )
    return found


# ---- labeling ---------------------------------------------------------------------------------
@dataclass
class PseudoLabelReport:
    task: str
    model_id: str
    dataset_version: str
    faces: int  # faces without a human or gold label for the task
    labeled_faces: int  # faces that got at least one pseudo label
    rows: int  # label rows made
    added: int
    updated: int
    skipped: int  # unreadable crops (rejects)
    thresholds: dict[str, Cut | None]  # the out-of-fold cuts (the model's held-out people)
    per_label: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {present, absent} / {n}
    # source -> {calibration, verified, rows}: which cuts each source's faces got
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    # source -> label -> Cut: the cuts chosen on a source's own human-labeled faces
    source_thresholds: dict[str, dict[str, Cut | None]] = field(default_factory=dict)
    withdrawn: int = 0  # earlier labels of this model the cuts no longer give (now unverified)
    folder: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)  # the report's files (markdown, html)

    @property
    def unverified(self) -> list[str]:
        """Sources whose pseudo labels stay out of dataset versions (their precision unmeasured)."""
        return [s for s, v in self.per_source.items() if not v["verified"]]

    @property
    def unmet(self) -> list[str]:
        """Labels that get no pseudo labels: their target precision cannot be met."""
        return [k for k, c in self.thresholds.items() if c is None]

    def summary(self) -> str:
        unmet = f"; no pseudo labels (target not met): {', '.join(self.unmet)}" if self.unmet else ""
        unverified = (
            f"; unverified (kept out of dataset versions until curators label enough of them): "
            f"{', '.join(self.unverified)}"
            if self.unverified
            else ""
        )
        return (
            f"{self.task} pseudo labels by {self.model_id} on {self.dataset_version}: {self.labeled_faces} of "
            f"{self.faces} faces labeled, {self.rows} rows ({self.added} new, {self.updated} updated), "
            f"{self.skipped} unreadable, {self.withdrawn} withdrawn{unmet}{unverified}"
        )

    def thresholds_json(self) -> dict[str, Any]:
        return {k: (asdict(c) if c else None) for k, c in self.thresholds.items()}


def candidate_faces(
    wh: Warehouse, task: str | Task, version: str, manifest: pa.Table | None = None
) -> pa.Table:
    """The version's usable faces without a human or gold label for `task` (manifest rows; the
    version's manifest is read unless given)."""
    manifest = read_manifest(wh, version) if manifest is None else manifest
    source = manifest.column(get_task(task).source_column).to_pylist()
    keep = [s not in STRONG_SOURCES for s in source]
    return manifest.filter(pa.array(keep, pa.bool_()))


def latest_version(wh: Warehouse) -> str:
    """The newest dataset version. Raises LookupError when there is none."""
    versions = list_versions(wh)
    if not versions.num_rows:
        raise LookupError(f"no dataset version in {wh.home}: run `ferlab version` first")
    return versions.column("version")[-1].as_py()


def resolve_model(wh: Warehouse, task: str | Task, model_id: str | None) -> str:
    """`model_id`, or the task's production model.

    Raises:
        LookupError: no production model of the task. ConfigError: an unknown task, or a model of
            another task.
    """
    task = get_task(task).name
    if model_id:
        if not model_id.startswith(task + "-"):
            raise ConfigError(f"model {model_id} is not a {task} model")
        return model_id
    found = production_model(wh, task)
    if found is None:
        raise LookupError(
            f"no production {task} model in {wh.home}: train one (`ferlab train {task}`) and promote it "
            "(`ferlab models --decide MODEL_ID`)"
        )
    return found


def face_predictions(
    wh: Warehouse, predictor: Predictor, faces: pa.Table, batch_size: int = 64
) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The predictor's probabilities of the faces (manifest rows), cached per model in
    `<home>/predictions/<model_id>-<weights fingerprint>.parquet` (crop_id, image_id, one column per
    label): a face predicted once is read back, only new faces run (crops are content-addressed, so a
    crop id is one picture). Returns (rows in the faces' order, skipped (crop_id, path))."""
    cache = wh.home / "predictions" / f"{predictor.model_id}-{predictor.fingerprint}.parquet"
    stored = pq.read_table(cache) if cache.is_file() else None
    known = set(stored.column("crop_id").to_pylist()) if stored is not None else set()
    ids = faces.column("crop_id").to_pylist()
    paths = faces.column(predictor.media_column()).to_pylist()
    images = faces.column("image_id").to_pylist()
    todo = [i for i, c in enumerate(ids) if c not in known]
    prob = predictor.predict([paths[i] for i in todo], batch_size=batch_size, skip_unreadable=True)
    readable = ~np.isnan(prob).any(1) if len(todo) else np.zeros(0, bool)
    skipped = [(ids[todo[i]], paths[todo[i]]) for i in np.flatnonzero(~readable)]
    keep = np.flatnonzero(readable)
    fresh = pa.table(
        {
            "crop_id": pa.array([ids[todo[i]] for i in keep], pa.string()),
            "image_id": pa.array([images[todo[i]] for i in keep], pa.string()),
            **{lab: pa.array(prob[keep, k], pa.float32()) for k, lab in enumerate(predictor.labels)},
        }
    )
    merged = pa.concat_tables([stored, fresh]) if stored is not None else fresh
    if fresh.num_rows:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            pq.write_table(merged, tmp, compression="zstd")
    index = {c: i for i, c in enumerate(merged.column("crop_id").to_pylist())}
    take = [index[c] for c in ids if c in index]
    return merged.take(pa.array(take, pa.int64())), skipped


def pseudo_label(
    wh: Warehouse, task: str | Task, settings: PseudoLabelSettings | None = None
) -> PseudoLabelReport:
    """Label the faces of the module docstring; write the task's label table's rows
    (`Task.label_table`: au_labels / emotion_labels), the unreadable crops as rejects, and the
    settings + thresholds + report.json beside the model's predictions in
    `<home>/pseudo_labels/<task>/<model_id>/`; the report a reader opens (cuts, precision,
    coverage per label and source) to `reports/<version>/pseudo-<task>-<model_id>/`
    (`labeling.curation.reports`). Progress goes to this module's logger.

    Raises:
        LookupError: no dataset version, or no production model for the task (and none given).
        ConfigError: an unknown task, a model of another task, or settings the predictor refuses.
    """
    task = get_task(task)
    label_rows = _label_rows_of(task)
    settings = settings or PseudoLabelSettings()
    model_id = resolve_model(wh, task, settings.model_id)
    version = settings.version or latest_version(wh)
    run = load_run(wh, model_id)
    manifest = read_manifest(wh, version)
    faces = candidate_faces(wh, task, version, manifest)
    out_of_fold = pseudo_thresholds(run.folds, settings.target_precision, settings.min_support)
    log.info(
        "%s: %d faces of %s without a human or gold %s label", model_id, faces.num_rows, version, task.name
    )
    predictor = Predictor.load(wh, model_id, backend=settings.backend, device=settings.device)
    predicted, skipped = face_predictions(wh, predictor, faces, settings.batch_size)
    if skipped:
        wh.add_rejects(
            [
                Reject(
                    "crops", path, "pseudo_label", "unreadable_crop", f"crop {cid}: missing or corrupt file"
                )
                for cid, path in skipped
            ]
        )
    by_source = source_cuts(
        wh, task, predictor, run, out_of_fold, manifest, faces["source"].to_pylist(), settings
    )
    source_of = dict(zip(faces["crop_id"].to_pylist(), faces["source"].to_pylist(), strict=True))
    predicted_source = np.array([source_of[c] for c in predicted["crop_id"].to_pylist()], dtype=object)
    parts, per_label, per_source = [], {}, {}
    for source, where in by_source.items():
        mine = predicted.filter(pa.array(predicted_source == source, pa.bool_()))
        part, counts = label_rows(mine, predictor.labels, where.cuts, model_id)
        n = part.num_rows
        parts.append(
            part.append_column("calibration", pa.array([where.calibration] * n, pa.string())).append_column(
                "verified", pa.array([where.verified] * n, pa.bool_())
            )
        )
        per_source[source] = {"calibration": where.calibration, "verified": where.verified, "rows": n}
        for label, c in counts.items():
            per_label[label] = {k: per_label.get(label, {}).get(k, 0) + v for k, v in c.items()}
    rows = pa.concat_tables(parts) if parts else label_rows(predicted, predictor.labels, {}, model_id)[0]
    written = wh.append_labels(task.label_table, rows)
    withdrawn = withdraw_stale(wh, task, model_id, faces, rows)
    report = PseudoLabelReport(
        task=task.name,
        model_id=model_id,
        dataset_version=version,
        faces=faces.num_rows,
        labeled_faces=len(set(rows.column("crop_id").to_pylist())),
        rows=rows.num_rows,
        added=written.added,
        updated=written.updated,
        skipped=len(skipped),
        thresholds=out_of_fold,
        per_label=per_label,
        per_source=per_source,
        source_thresholds={s: w.cuts for s, w in by_source.items() if w.calibration != OUT_OF_FOLD},
        withdrawn=withdrawn,
    )
    folder = wh.home / "pseudo_labels" / task.name / model_id
    settings.save(folder)
    payload = {
        **{
            k: v
            for k, v in asdict(report).items()
            if k not in ("thresholds", "source_thresholds", "folder", "report")
        },
        "thresholds": report.thresholds_json(),
        "source_thresholds": {
            src: {k: (asdict(c) if c else None) for k, c in cuts.items()}
            for src, cuts in report.source_thresholds.items()
        },
        "unmet": report.unmet,
    }
    atomic_write_bytes(folder / "report.json", json.dumps(payload, indent=1, default=str).encode())
    report.folder = folder
    report.report = write_pseudo_report(wh.home, report, settings)
    log.info("%s; report %s", report.summary(), report.report["html"])
    return report


WITHDRAWN = "withdrawn"


def withdraw_stale(wh: Warehouse, task: Task, model_id: str, faces: pa.Table, rows: pa.Table) -> int:
    """The model's stored pseudo labels of `faces` that this run's cuts no longer give (a stricter
    cut, a source calibrated anew) are written again as unverified, calibration "withdrawn": they
    stay in the history but leave dataset versions. Returns how many were withdrawn."""
    key = [k for k in TABLES[task.label_table].key if k != "label_source"]
    stored = wh.sql(
        f"SELECT * EXCLUDE (recorded_at) FROM {task.label_table} WHERE label_source = 'pseudo' "
        "AND annotator = $model AND crop_id IN (SELECT unnest($crops)) AND calibration IS DISTINCT FROM $w",
        {"model": model_id, "crops": faces["crop_id"].to_pylist(), "w": WITHDRAWN},
    )
    given = set(zip(*(rows[k].to_pylist() for k in key), strict=True))
    stale = [
        i for i, k in enumerate(zip(*(stored[k].to_pylist() for k in key), strict=True)) if k not in given
    ]
    if not stale:
        return 0
    out = stored.take(pa.array(stale, pa.int64()))
    out = out.set_column(out.schema.get_field_index("verified"), "verified", pa.array([False] * len(stale)))
    out = out.set_column(
        out.schema.get_field_index("calibration"), "calibration", pa.array([WITHDRAWN] * len(stale))
    )
    return wh.append_labels(task.label_table, out).updated


# ---- label rows, per task -----------------------------------------------------------------------
LabelRows = Callable[
    [pa.Table, list[str], dict[str, Cut | None], str], tuple[pa.Table, dict[str, dict[str, int]]]
]
"""(predicted faces, the model's labels, their cuts, model id) -> (rows of the task's label
table, per-label counts for the report)."""


def _label_rows_of(task: Task) -> LabelRows:
    """How the task's pseudo labels become rows of its label table (`LABEL_ROWS`).

    Raises:
        ConfigError: a task without pseudo labels.
    """
    for kind, rows in LABEL_ROWS.items():
        if isinstance(task, kind):
            return rows
    raise ConfigError(
        f"task {task.name!r} has no pseudo labels; tasks that have: {sorted(k.name for k in LABEL_ROWS)}"
    )


def _typed(table: str, columns: dict[str, Any]) -> pa.Table:
    """`columns` as a table with the label table's types (an empty column has none of its own)."""
    schema = TABLES[table].schema
    return pa.table(columns, schema=pa.schema([schema.field(name) for name in columns]))


def _au_rows(
    predicted: pa.Table, labels: list[str], cuts: dict[str, Cut | None], model_id: str
) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    crop_ids = np.array(predicted.column("crop_id").to_pylist(), dtype=object)
    image_ids = np.array(predicted.column("image_id").to_pylist(), dtype=object)
    parts: list[dict[str, Any]] = []
    per_label: dict[str, dict[str, int]] = {}
    for label in labels:
        cut = cuts.get(label)
        p = predicted.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
        present, absent = au_decisions(p, cut)
        per_label[label] = {"present": int(present.sum()), "absent": int(absent.sum())}
        for mask, is_present, thr in ((present, True, cut and cut.upper), (absent, False, cut and cut.lower)):
            n = int(mask.sum())
            if n:
                parts.append(
                    {
                        "image_id": image_ids[mask].tolist(),
                        "crop_id": crop_ids[mask].tolist(),
                        "au": [int(label.removeprefix("AU"))] * n,
                        "present": [is_present] * n,
                        "probability": p[mask].tolist(),
                        "threshold": [float(thr)] * n,
                    }
                )
    cols: dict[str, list] = {
        k: [] for k in ("image_id", "crop_id", "au", "present", "probability", "threshold")
    }
    for part in parts:
        for k in cols:
            cols[k].extend(part[k])
    n = len(cols["image_id"])
    return _typed(
        "au_labels",
        {
            **cols,
            "intensity": pa.nulls(n, pa.float32()),
            "label_source": ["pseudo"] * n,
            "annotator": [model_id] * n,
        },
    ), per_label


def _emotion_rows(
    predicted: pa.Table, labels: list[str], cuts: dict[str, Cut | None], model_id: str
) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    prob = np.stack([predicted.column(lab).to_numpy(zero_copy_only=False) for lab in labels], 1)
    top, pred = (prob.max(1), prob.argmax(1)) if len(prob) else (np.zeros(0), np.zeros(0, int))
    upper = np.array([cuts[lab].upper if cuts.get(lab) else np.inf for lab in labels], np.float64)
    keep = np.flatnonzero(top >= upper[pred]) if len(prob) else np.zeros(0, int)
    per_label = {lab: {"labeled": int((pred[keep] == k).sum())} for k, lab in enumerate(labels)}
    crop_ids = predicted.column("crop_id").to_pylist()
    image_ids = predicted.column("image_id").to_pylist()
    return _typed(
        "emotion_labels",
        {
            "image_id": [image_ids[i] for i in keep],
            "crop_id": [crop_ids[i] for i in keep],
            "emotion": [labels[pred[i]] for i in keep],
            "label_source": ["pseudo"] * len(keep),
            "confidence": pa.array([float(top[i]) for i in keep], pa.float32()),
            "annotator": [model_id] * len(keep),
            "threshold": pa.array([float(upper[pred[i]]) for i in keep], pa.float32()),
        },
    ), per_label


LABEL_ROWS: dict[type[Task], LabelRows] = {AUTask: _au_rows, EmotionTask: _emotion_rows}
