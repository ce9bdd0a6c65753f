"""The review queue: faces a curator should look at, one `review_queue` row per (queue, face,
reason), with a priority in [0, 1] (higher first) and a detail line saying why.

    report = build_review_queue(wh, "au", ReviewSettings())

Reasons (REASONS), over the usable faces of a dataset version and the task's production model:
- `between_thresholds`: a face the pseudo-labeler labels (no human or gold label for the task)
  on which the model is unsure: for some AU with both pseudo-label thresholds its probability is
  between them (emotion: the top probability is under its class's cut), so it got no pseudo
  label there. Priority: the share of those AUs that are unsure (emotion: 1 - top probability).
- `weak_disagrees` (emotion): the face's weak label (its scraped folder) is not the model's top
  class. Priority: p(top class) - p(weak label).
- `low_detection_score`: the detector's score of the face is under `min_detection_score`.
  Priority: 1 - score.
- `likely_mistake`: the face's label (gold, weak or human) disagrees with the model: 1 - p(label)
  for an emotion, the mean |label - p| over the labeled AUs, computed here in numpy; queued from
  `mistake_threshold` up. With `brain`, emotions use FiftyOne Brain's mistakenness instead.
- `most_unique`: the faces farthest (cosine distance to their k-th nearest neighbour, through a
  faiss index: `knn_uniqueness`) from the other faces in the model's own backbone embedding: the
  rare looks a data set has few of; the `unique_top` most unique are queued. With `brain`,
  FiftyOne Brain's uniqueness on the same embeddings (passed in: no model-zoo download).

FiftyOne Brain works offline here (fiftyone-brain 0.25) and takes ~1-2 s on 300 faces, but needs
FiftyOne's database (its mongod starts in ~10 s), hence opt-in (`brain=True`); the numpy and faiss
measures need nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from labeling.curation.pseudo import (
    STRONG_SOURCES,
    Cut,
    face_predictions,
    latest_version,
    pseudo_thresholds,
    resolve_model,
)
from labeling.curation.reports import write_review_report
from labeling.curation.settings import REVIEW_REASONS, ReviewSettings
from models.pipeline import load_run
from models.predict import Predictor
from models.tasks import AUTask, EmotionTask, Task, get_task
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)
REASONS = REVIEW_REASONS


@dataclass
class ReviewReport:
    queue: str
    model_id: str
    dataset_version: str
    faces: int
    by_reason: dict[str, int]
    added: int
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # the report's files (markdown, html)

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.by_reason.items())
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"review queue {self.queue}: {sum(self.by_reason.values())} rows over {self.faces} faces: {reasons}; {self.added} new{notes}"


# Exact search up to this many faces: faiss' flat index is exact and, at this size, about as fast
# as the approximate one. Above it an inverted-file index (IVF) compares each face with the faces
# of a few k-means cells only, so the cost grows as N^1.5 instead of N^2.
EXACT_UP_TO = 20_000
IVF_PROBES = 16  # cells searched per face: more finds more true neighbours, at a linear cost
_TRAIN_BYTES = 1 << 28  # the k-means sample of the IVF, whatever the number of faces
_SEARCH_ROWS = 4096  # faces searched at a time: fewer leave faiss' matrix products short of work
_RECOMPUTE_ROWS = 1024  # faces whose candidates' distances are recomputed in float64 at a time
_CHUNK_BYTES = 1 << 25  # float32 rows added to the index at a time


def knn_uniqueness(z: np.ndarray, k: int = 3) -> np.ndarray:
    """Cosine distance of each row to its k-th nearest other row (0..2); NaN rows get NaN; k is
    capped at the number of other rows.

    The neighbours come from a faiss index of the L2-normalised rows (inner product): exact up to
    EXACT_UP_TO rows, an IVF index above it (approximate: a neighbour in a cell not probed is
    missed, so a distance can only come out larger than the exact one). A row's own match is left
    out by its index, also where a duplicate ties with it, and the candidates' distances are
    recomputed in float64. Memory: the index plus one chunk of rows, whatever the number of rows."""
    out = np.full(len(z), np.nan)
    rows = np.flatnonzero(~np.isnan(z).any(1))
    n = len(rows)
    if n < 2:
        return out
    k = min(k, n - 1)
    index = _ip_index(z, rows)
    for start in range(0, n, _SEARCH_ROWS):
        at = rows[start : start + _SEARCH_ROWS]
        _, found = index.search(_unit(z[at], np.float32), k + 1)
        short = np.flatnonzero((found < 0).any(1))
        if len(short):  # the probed cells held too few faces: search these faces exhaustively
            found[short] = _search_all_cells(index, _unit(z[at[short]], np.float32), k + 1)
        d = np.empty(found.shape)
        for sub in range(0, len(at), _RECOMPUTE_ROWS):
            part = slice(sub, sub + _RECOMPUTE_ROWS)
            q = _unit(z[at[part]], np.float64)
            for j in range(k + 1):
                other = _unit(z[rows[np.maximum(found[part, j], 0)]], np.float64)
                d[part, j] = 1.0 - np.einsum("nd,nd->n", q, other)
        own = found == np.arange(start, start + len(at))[:, None]
        d[own | (found < 0)] = np.inf  # not its own neighbour
        out[at] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def _unit(z: np.ndarray, dtype: type) -> np.ndarray:
    z = np.asarray(z, dtype=dtype)
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def _ip_index(z: np.ndarray, rows: np.ndarray):
    """A faiss inner-product index of the unit rows z[rows] (ids: positions in `rows`), added a
    chunk at a time: exact (flat) up to EXACT_UP_TO rows, else IVF with 4 sqrt(N) cells (fewer
    where the bounded training sample is short of 39 rows per cell), trained on a seeded sample
    (k-means with faiss' fixed seed: the same index each run)."""
    import faiss

    n, dim = len(rows), z.shape[1]
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        cap = max(1, _TRAIN_BYTES // (4 * dim))
        # faiss' advice: 4 to 16 sqrt(N) cells, k-means on at least 39 points per cell
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39, cap // 39))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * nlist, cap), replace=False))
        index.train(_unit(z[rows[sample]], np.float32))
        faiss.extract_index_ivf(index).nprobe = min(IVF_PROBES, nlist)
    step = max(1, _CHUNK_BYTES // (4 * dim))
    for start in range(0, n, step):
        index.add(_unit(z[rows[start : start + step]], np.float32))
    return index


def _search_all_cells(index, x: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k nearest of x in an IVF index, every cell probed (exact)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    probes, ivf.nprobe = ivf.nprobe, ivf.nlist
    try:
        return index.search(x, k)[1]
    finally:
        ivf.nprobe = probes


def brain_scores(
    media_paths: Sequence[str],
    embeddings: np.ndarray,
    prob: np.ndarray | None = None,
    labels: Sequence[str] = (),
    label_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """FiftyOne Brain's uniqueness (from `embeddings`: no model-zoo download) and, given class
    probabilities and each face's label index (-1: none), its mistakenness, on a temporary
    dataset in FiftyOne's database (deleted after). Rows in the order given; mistakenness NaN
    for faces without a label. Starts FiftyOne's mongod when it is not running (~10 s)."""
    import fiftyone as fo
    import fiftyone.brain as fob

    dataset = fo.Dataset()
    try:
        samples = []
        for i, path in enumerate(media_paths):
            sample = fo.Sample(filepath=str(path), row=i)
            if prob is not None and label_index is not None and label_index[i] >= 0:
                p = np.clip(prob[i].astype(np.float64), 1e-7, 1.0)
                sample["truth"] = fo.Classification(label=labels[int(label_index[i])])
                sample["model"] = fo.Classification(
                    label=labels[int(p.argmax())], confidence=float(p.max()), logits=np.log(p)
                )
            samples.append(sample)
        dataset.add_samples(samples, progress=False)
        rows = np.array(dataset.values("row"))
        fob.compute_uniqueness(dataset, embeddings=embeddings[rows], progress=False)
        uniqueness = np.empty(len(rows))
        uniqueness[rows] = dataset.values("uniqueness")
        mistakenness = None
        if prob is not None and label_index is not None and (label_index >= 0).any():
            labeled = dataset.exists("truth")
            fob.compute_mistakenness(labeled, "model", label_field="truth", use_logits=True, progress=False)
            mistakenness = np.full(len(rows), np.nan)
            for row, value in zip(*labeled.values(["row", "mistakenness"])):
                mistakenness[row] = value
        return uniqueness, mistakenness
    finally:
        dataset.delete()


Candidate = tuple[int, str, float, str]  # (the face's manifest row, reason, priority, detail)


@dataclass
class ReviewInputs:
    """What the reasons look at: the version's faces (manifest rows) and the model's probabilities
    of those it could read."""

    wh: Warehouse
    task: Task
    settings: ReviewSettings
    model_id: str
    faces: pa.Table  # the dataset version's manifest
    predictor: Predictor
    rows_at: np.ndarray  # the manifest row of each predicted face
    prob: np.ndarray  # (predicted faces, labels) float64
    notes: list[str] = field(default_factory=list)  # what a reason could not do
    brain_uniqueness: np.ndarray | None = None  # FiftyOne Brain's, once a reason computed it

    @property
    def labels(self) -> list[str]:
        return self.predictor.labels

    def media(self) -> list[str]:
        """The faces' media paths, as the model reads them."""
        return self.faces.column(self.predictor.media_column()).to_pylist()


Reason = Callable[[ReviewInputs], list[Candidate]]


def build_review_queue(
    wh: Warehouse, task: str | Task, settings: ReviewSettings | None = None
) -> ReviewReport:
    """Queue the version's faces for the reasons of the module docstring (rows keyed by queue,
    face and reason: building the same queue again adds nothing), and write the report of this
    build's rows (per reason, priorities, top examples) to `reports/<version>/review-<queue>/`
    (`labeling.curation.reports`). The summary goes to this module's logger.

    Raises:
        LookupError: no dataset version, or no production model for the task (and none given).
        ConfigError: an unknown task, or a model of another task.
    """
    task = get_task(task)
    s = settings or ReviewSettings()
    model_id = resolve_model(wh, task, s.model_id)
    version = s.version or latest_version(wh)
    queue = s.queue or f"{task.name}:{model_id}"
    faces = read_manifest(wh, version)
    predictor = Predictor.load(wh, model_id, backend=s.backend, device=s.device)
    predicted, _ = face_predictions(wh, predictor, faces, s.batch_size)
    idx = {c: i for i, c in enumerate(faces.column("crop_id").to_pylist())}
    rows_at = np.array([idx[c] for c in predicted.column("crop_id").to_pylist()], dtype=np.int64)
    prob = np.stack(
        [predicted.column(lab).to_numpy(zero_copy_only=False) for lab in predictor.labels], 1
    ).astype(np.float64)
    inputs = ReviewInputs(wh, task, s, model_id, faces, predictor, rows_at, prob)
    found = [
        *between_thresholds(inputs),
        *weak_disagrees(inputs),
        *likely_mistake(inputs),
        *low_detection_score(inputs),
        *most_unique(inputs),
    ]
    rows = _queue_rows(queue, model_id, faces, found)
    added = wh.append("review_queue", rows)
    by_reason = {r: sum(1 for _, reason, _, _ in found if reason == r) for r in REASONS}
    report = ReviewReport(queue, model_id, version, faces.num_rows, by_reason, added, inputs.notes)
    report.report = write_review_report(wh.home, report, rows, REASONS, s)
    log.info("%s; report %s", report.summary(), report.report["html"])
    return report


def _queue_rows(queue: str, model_id: str, faces: pa.Table, found: Sequence[Candidate]) -> pa.Table:
    """`review_queue` rows of the candidates."""
    now = dt.datetime.now(dt.UTC)
    crop_ids = faces.column("crop_id").to_pylist()
    image_ids = faces.column("image_id").to_pylist()
    media = faces.column("media_path").to_pylist()
    return pa.table(
        {
            "queue": [queue] * len(found),
            "crop_id": [crop_ids[r] for r, *_ in found],
            "image_id": [image_ids[r] for r, *_ in found],
            "media_path": [media[r] for r, *_ in found],
            "reason": [reason for _, reason, _, _ in found],
            "priority": pa.array([float(np.clip(p, 0, 1)) for _, _, p, _ in found], pa.float64()),
            "detail": [d for *_, d in found],
            "model_id": [model_id] * len(found),
            "queued_at": pa.array([now] * len(found), pa.timestamp("us", tz="UTC")),
        }
    )


# ---- the reasons ----------------------------------------------------------------------------------
def between_thresholds(q: ReviewInputs) -> list[Candidate]:
    """`between_thresholds`: the faces the pseudo-labeler labels (no human or gold label for the
    task) on which the model is unsure, as the task's `TaskReasons.unsure` says."""
    s = q.settings
    cuts = pseudo_thresholds(load_run(q.wh, q.model_id).folds, s.target_precision, s.min_support)
    strong = q.faces.column(q.task.source_column).to_pylist()
    candidate = np.array([strong[r] not in STRONG_SOURCES for r in q.rows_at], dtype=bool)
    return task_reasons(q.task).unsure(q, cuts, candidate)


def weak_disagrees(q: ReviewInputs) -> list[Candidate]:
    """`weak_disagrees`: the face's weak label is not what the model predicts (tasks with weak labels)."""
    weak = task_reasons(q.task).weak_disagrees
    return weak(q) if weak else []


def likely_mistake(q: ReviewInputs) -> list[Candidate]:
    """`likely_mistake`: the face's own label (gold, weak or human) against the model."""
    return task_reasons(q.task).likely_mistake(q)


def low_detection_score(q: ReviewInputs) -> list[Candidate]:
    """`low_detection_score`: the detector's score of the face is under `min_detection_score`."""
    idx = {c: i for i, c in enumerate(q.faces.column("crop_id").to_pylist())}
    return [
        (idx[crop_id], "low_detection_score", 1.0 - score, f"score {score:.2f}")
        for crop_id, score in _detection_scores(q.wh, q.faces).items()
        if score < q.settings.min_detection_score
    ]


def most_unique(q: ReviewInputs) -> list[Candidate]:
    """`most_unique`: the `unique_top` faces farthest from the others in the model's backbone
    embedding (FiftyOne Brain's uniqueness with `brain`). A model that cannot embed adds a note."""
    s = q.settings
    if not s.unique_top:
        return []
    found: list[Candidate] = []
    try:
        if s.brain:
            dist = q.brain_uniqueness
            if dist is None:
                dist, _ = brain_scores(q.media(), _embeddings(q.predictor, q.faces, s))
            measure = "FiftyOne Brain uniqueness"
        else:
            z = q.predictor.embed(q.media(), batch_size=s.batch_size)
            dist = knn_uniqueness(z, s.neighbours)  # unreadable crops: NaN, never queued
            measure = f"{s.neighbours}-NN cosine distance"
        order = np.argsort(-np.nan_to_num(dist, nan=-1))[: s.unique_top]
        top_d = np.nanmax(dist) if np.isfinite(dist).any() else 1.0
        for r in order:
            if np.isfinite(dist[r]):
                found.append((int(r), "most_unique", float(dist[r] / top_d), f"{measure} {dist[r]:.3f}"))
    except ValueError as exc:
        q.notes.append(f"most_unique skipped: {exc}")
    return found


# ---- what differs between tasks -----------------------------------------------------------------
def au_unsure(prob: np.ndarray, labels: Sequence[str], cuts: dict[str, Cut | None]) -> tuple[np.ndarray, int]:
    """(faces, AUs) True where an AU with both pseudo-label thresholds has its probability between
    them, and how many AUs have both (a one-sided AU is not unsure between them: the model cannot
    call that side at all). A face's `between_thresholds` priority is its row's share of those."""
    two_sided = [
        k for k, lab in enumerate(labels) if cuts.get(lab) and None not in (cuts[lab].lower, cuts[lab].upper)
    ]
    unsure = np.zeros_like(prob, dtype=bool)
    for k in two_sided:
        c = cuts[labels[k]]
        unsure[:, k] = (prob[:, k] > c.lower) & (prob[:, k] < c.upper)
    return unsure, len(two_sided)


def _au_unsure(q: ReviewInputs, cuts: dict[str, Cut | None], candidate: np.ndarray) -> list[Candidate]:
    """`au_unsure` over the predicted faces. Priority: the share of the two-sided AUs that are unsure."""
    labels, prob = q.labels, q.prob
    unsure, two_sided = au_unsure(prob, labels, cuts)
    found: list[Candidate] = []
    for i in np.flatnonzero(unsure.any(1) & candidate):
        detail = ", ".join(f"{labels[k]} {prob[i, k]:.2f}" for k in np.flatnonzero(unsure[i]))
        found.append((q.rows_at[i], "between_thresholds", unsure[i].sum() / two_sided, detail))
    return found


def _emotion_unsure(q: ReviewInputs, cuts: dict[str, Cut | None], candidate: np.ndarray) -> list[Candidate]:
    """The top probability is under its class's cut. Priority: 1 - top probability."""
    labels = q.labels
    top, pred = q.prob.max(1), q.prob.argmax(1)
    found: list[Candidate] = []
    for i in np.flatnonzero(candidate):
        c = cuts.get(labels[pred[i]])
        if c is not None and top[i] < c.upper:
            detail = f"{labels[pred[i]]} {top[i]:.2f} < {c.upper:.2f}"
            found.append((q.rows_at[i], "between_thresholds", 1 - top[i], detail))
    return found


def _emotion_weak_disagrees(q: ReviewInputs) -> list[Candidate]:
    """The face's weak label (its scraped folder) is not the model's top class. Priority:
    p(top class) - p(weak label)."""
    labels, prob = q.labels, q.prob
    weak = _weak_emotions(q.wh, q.faces)
    all_ids = q.faces.column("crop_id").to_pylist()
    found: list[Candidate] = []
    for i, r in enumerate(q.rows_at):
        w = weak.get(all_ids[r])
        if w in labels and labels[int(prob[i].argmax())] != w:
            k = labels.index(w)
            top = labels[int(prob[i].argmax())]
            gap = float(prob[i].max() - prob[i, k])
            found.append(
                (r, "weak_disagrees", gap, f"weak {w} {prob[i, k]:.2f}, model {top} {prob[i].max():.2f}")
            )
    return found


def _emotion_likely_mistake(q: ReviewInputs) -> list[Candidate]:
    """1 - p(label) of the face's non-pseudo emotion label, from `mistake_threshold` up; with
    `brain`, FiftyOne Brain's mistakenness instead (its uniqueness is kept for `most_unique`)."""
    s, labels, prob, rows_at, faces = q.settings, q.labels, q.prob, q.rows_at, q.faces
    label_col = faces.column("emotion").to_pylist()
    source_col = faces.column(q.task.source_column).to_pylist()
    label_index = np.array(
        [
            labels.index(label_col[r]) if label_col[r] in labels and source_col[r] != "pseudo" else -1
            for r in rows_at
        ]
    )
    brain_mistakes = None
    if s.brain:
        q.brain_uniqueness, brain_mistakes = brain_scores(
            q.media(),
            _embeddings(q.predictor, faces, s),
            _full(prob, rows_at, len(faces)),
            labels,
            _full(label_index[:, None], rows_at, len(faces), fill=-1)[:, 0].astype(int),
        )
    found: list[Candidate] = []
    for i, r in enumerate(rows_at):
        lab, src = label_col[r], source_col[r]
        if label_index[i] >= 0:
            score = 1.0 - prob[i, label_index[i]] if brain_mistakes is None else brain_mistakes[r]
            how = "" if brain_mistakes is None else " (FiftyOne Brain mistakenness)"
            if score >= s.mistake_threshold:
                found.append(
                    (r, "likely_mistake", score, f"{src} {lab}, model p={prob[i, label_index[i]]:.2f}{how}")
                )
    return found


def _au_likely_mistake(q: ReviewInputs) -> list[Candidate]:
    """The mean |label - p| over the face's labeled AUs (pseudo labels left out), from
    `mistake_threshold` up."""
    labels, prob, rows_at, faces = q.labels, q.prob, q.rows_at, q.faces
    cols = [f"au{lab.removeprefix('AU')}" for lab in labels]
    y = np.stack(
        [np.array([np.nan if v is None else float(v) for v in faces.column(c).to_pylist()]) for c in cols],
        1,
    )[rows_at]
    src = faces.column(q.task.source_column).to_pylist()
    diff = np.abs(y - prob)
    n_labeled = (~np.isnan(diff)).sum(1)
    has = n_labeled > 0
    score = np.nansum(diff, axis=1) / np.maximum(n_labeled, 1)
    found: list[Candidate] = []
    for i in np.flatnonzero(has & (score >= q.settings.mistake_threshold)):
        if src[rows_at[i]] == "pseudo":
            continue
        worst = int(np.nanargmax(diff[i]))
        found.append(
            (
                rows_at[i],
                "likely_mistake",
                float(score[i]),
                f"{src[rows_at[i]]} labels; worst {labels[worst]} p={prob[i, worst]:.2f}",
            )
        )
    return found


@dataclass(frozen=True)
class TaskReasons:
    """How a task's faces are judged where tasks differ (`TASK_REASONS`, keyed by task type)."""

    unsure: Callable[[ReviewInputs, dict[str, Cut | None], np.ndarray], list[Candidate]]
    likely_mistake: Reason
    weak_disagrees: Reason | None = None  # None: the task has no weak labels


TASK_REASONS: dict[type[Task], TaskReasons] = {
    AUTask: TaskReasons(unsure=_au_unsure, likely_mistake=_au_likely_mistake),
    EmotionTask: TaskReasons(
        unsure=_emotion_unsure, likely_mistake=_emotion_likely_mistake, weak_disagrees=_emotion_weak_disagrees
    ),
}


def task_reasons(task: Task) -> TaskReasons:
    """The task's entry of `TASK_REASONS`.

    Raises:
        ConfigError: a task the review queue does not know.
    """
    for kind, reasons in TASK_REASONS.items():
        if isinstance(task, kind):
            return reasons
    raise ConfigError(
        f"no review reasons for task {task.name!r}; known: {sorted(k.name for k in TASK_REASONS)}"
    )


def _embeddings(predictor: Predictor, faces: pa.Table, s: ReviewSettings) -> np.ndarray:
    """The faces' backbone embeddings (zeros for an unreadable crop, which has NaN)."""
    z = predictor.embed(faces.column(predictor.media_column()).to_pylist(), batch_size=s.batch_size)
    return np.nan_to_num(z)


def _full(values: np.ndarray, rows_at: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    """`values` of the predicted faces placed at their rows of the n faces (`fill` elsewhere)."""
    out = np.full((n, values.shape[1]), fill, dtype=np.float64)
    out[rows_at] = values
    return out


def _weak_emotions(wh: Warehouse, faces: pa.Table) -> dict[str, str]:
    """crop_id -> its weak emotion label: one naming the face, or its image's when the face is
    the image's only face in the version."""
    with wh.connect() as con:
        con.register("m", faces.select(["crop_id", "image_id"]))
        rows = con.sql(
            """
            WITH alone AS (SELECT crop_id, image_id, count(*) OVER (PARTITION BY image_id) AS n FROM m)
            SELECT a.crop_id, min(e.emotion) AS emotion FROM alone a JOIN emotion_labels e ON e.image_id = a.image_id
            WHERE e.label_source = 'weak' AND (e.crop_id = a.crop_id OR (e.crop_id IS NULL AND a.n = 1))
            GROUP BY a.crop_id HAVING count(DISTINCT e.emotion) = 1
            """
        ).fetchall()
    return dict(rows)


def _detection_scores(wh: Warehouse, faces: pa.Table) -> dict[str, float]:
    with wh.connect() as con:
        con.register("m", faces.select(["crop_id"]))
        rows = con.sql(
            "SELECT m.crop_id, d.score FROM m JOIN crops c USING (crop_id) JOIN detections d USING (detection_id)"
        ).fetchall()
    return {c: float(s) for c, s in rows}


def queue_table(wh: Warehouse, queue: str | None = None, limit: int = 50) -> pa.Table:
    """The queue's rows, highest priority first (every queue when None)."""
    where = "WHERE queue = $q" if queue else ""
    params = {"q": queue, "n": limit} if queue else {"n": limit}
    return wh.sql(
        f"SELECT queue, reason, round(priority, 3) AS priority, crop_id, detail, media_path FROM review_queue {where} "
        "ORDER BY priority DESC, reason, crop_id LIMIT $n",
        params=params,
    )
