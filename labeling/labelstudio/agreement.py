"""More than one curator per face: how much they agree, and which of their answers a face keeps.

Action Units are coded by trained people who disagree, so the field reports inter-rater
reliability. A Label Studio project can give each task to N annotators (`overlap`:
`LabelStudioClient.set_overlap`). The pull writes each submitted answer as human labels of its
own annotator (`labelstudio:<user id>`, when: `recorded_at`); the label tables are keyed by
annotator, so two curators' answers on one face are two labels: both stay, neither supersedes
the other. `read_answers` reads them back from the warehouse (not from the server), per item:
the emotion (one of EMOTIONS) and each of the 12 DISFA AUs (present or absent), for the faces
those curators answered.

Agreement (`agreement_table`, `write_report`: `ferlab labelstudio agreement`), per item over the
faces answered by two annotators or more (an annotator who answered the emotion only is no
answer for the AUs); also each emotion against the rest ("emotion: happy": chose happy or not):
- percent agreement: per face, the share of its pairs of annotators that gave the same value,
  averaged over the faces (two annotators: the share of faces they agree on);
- Cohen's kappa (`sklearn.metrics.cohen_kappa_score`) between two annotators over the faces both
  answered; with more annotators, the mean over the pairs that share a face (Light's kappa);
- Krippendorff's alpha, nominal: any number of annotators, missing answers allowed. From the
  coincidence matrix of the pairable values (a face's values when it has two or more),
  alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k (Krippendorff, "Computing
  Krippendorff's alpha-reliability", 2011). Written here in numpy: the `krippendorff` package
  is not one of ferlab's dependencies.
A figure the data cannot define (every answer the same value: no variation to agree about) is
NaN, "n/a" in the report.

Consensus (`outcomes`, `apply_consensus`, run by every pull): per face and item with two answers
or more, the rule (RULES) says whether the panel agrees: `majority`, more than half of the
annotators gave one value; `unanimous`, all did. The outcome is written as a human label of
annotator `labelstudio:consensus` (warehouse.precedence.CONSENSUS_ANNOTATOR): the value most of
them gave (a tie: the first in EMOTIONS order, absent before present), confidence (AUs:
probability) the share of annotators who gave it, threshold the share the rule needs. The label
tables are versioned, so a changed answer or rule supersedes the outcome and keeps the earlier
one in the history. warehouse.precedence makes every reader (dataset versions, FiftyOne) take
the outcome: once a face has one, its individual Label Studio answers no longer count, and an
outcome under its threshold does not count either, so a face without consensus gets no human
label from that disagreement. Such a face goes back to the review queue: a `review_queue` row
(queue QUEUE, reason DISAGREEMENT, priority the share of its answered items without consensus)
whose detail says who answered what. The queue's key is (queue, face, reason): a face already
queued for a disagreement is not queued again (its detail stays the first one).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.precedence import CONSENSUS_ANNOTATOR, PANEL_PREFIX
from warehouse.schemas import AU_LABELS, DISFA_AUS, EMOTION_LABELS, EMOTIONS, TABLES
from warehouse.store import LabelWrite

log = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("majority", "unanimous")
DEFAULT_RULE = "majority"
QUEUE = "labelstudio"  # the review_queue queue of the faces the panel disagrees on
DISAGREEMENT = "disagreement"  # their reason (labeling.curation.review.REASONS)
EMOTION = "emotion"
AU_ITEMS: tuple[str, ...] = tuple(f"AU{n}" for n in DISFA_AUS)
REPORT_DIR = ("reports", "labelstudio", "agreement")  # under the data root
DETAIL_LIMIT = 200  # disagreements listed in the report


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"unknown consensus rule {rule!r}: use one of {', '.join(RULES)}")
    return rule


# ---- the answers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answers:
    """The Label Studio curators' current answers: per item ("emotion", "AU1", ...) {crop_id:
    {annotator: value}} (an emotion name; True / False for an AU present / absent)."""

    items: dict[str, dict[str, dict[str, Any]]]

    def several(self, item: str) -> dict[str, dict[str, Any]]:
        """The faces of `item` answered by two annotators or more."""
        return {c: a for c, a in self.items.get(item, {}).items() if len(a) >= 2}


def read_answers(wh: Warehouse) -> Answers:
    """Every Label Studio annotator's current answer (the label views: an updated annotation's
    newest labels), the consensus rows left out."""
    params = {"panel": PANEL_PREFIX, "consensus": CONSENSUS_ANNOTATOR}
    where = (
        "label_source = 'human' AND starts_with(annotator, $panel) AND annotator <> $consensus "
        "AND crop_id IS NOT NULL"
    )
    items: dict[str, dict[str, dict[str, Any]]] = {}
    emotions = wh.sql(
        f"SELECT crop_id, annotator, emotion FROM emotion_labels WHERE {where} "
        "AND list_contains($emotions, emotion) ORDER BY crop_id, annotator",
        {**params, "emotions": list(EMOTIONS)},
    )
    for r in emotions.to_pylist():
        items.setdefault(EMOTION, {}).setdefault(r["crop_id"], {})[r["annotator"]] = r["emotion"]
    aus = wh.sql(
        f"SELECT crop_id, annotator, au, present FROM au_labels WHERE {where} "
        "AND list_contains($aus, au) ORDER BY crop_id, annotator, au",
        {**params, "aus": list(DISFA_AUS)},
    )
    for r in aus.to_pylist():
        items.setdefault(f"AU{r['au']}", {}).setdefault(r["crop_id"], {})[r["annotator"]] = bool(r["present"])
    return Answers(items)


# ---- the statistics ----------------------------------------------------------------------------
Unit = Mapping[str, Any]  # one face's answers: annotator -> value (None: no answer)


def _values(unit: Unit) -> list[Any]:
    return [v for v in unit.values() if v is not None]


def percent_agreement(units: Iterable[Unit]) -> float:
    """Per unit with two values or more, the share of its pairs of annotators that agree;
    averaged over those units (NaN when there is none)."""
    shares = []
    for unit in units:
        values = _values(unit)
        m = len(values)
        if m < 2:
            continue
        agreeing = sum(n * (n - 1) for n in Counter(values).values())
        shares.append(agreeing / (m * (m - 1)))
    return float(np.mean(shares)) if shares else float("nan")


def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Cohen's kappa of two annotators' values on the same units (sklearn); NaN when undefined
    (no unit, or both gave one and the same value throughout: chance agreement is 1)."""
    if not first or len(set(first) | set(second)) < 2:
        return float("nan")
    from sklearn.metrics import cohen_kappa_score

    labels = sorted(set(first) | set(second), key=_order)
    return float(cohen_kappa_score(list(first), list(second), labels=labels))


def pairwise_kappa(units: Iterable[Unit]) -> tuple[float, int]:
    """(kappa, pairs): Cohen's kappa of the two annotators over the units both answered; with
    more annotators, the mean over the pairs that share a unit and define one (Light's kappa).
    `pairs`: how many pairs of annotators share a unit."""
    units = [{a: v for a, v in u.items() if v is not None} for u in units]
    annotators = sorted({a for u in units for a in u})
    kappas, pairs = [], 0
    for a, b in itertools.combinations(annotators, 2):
        both = [u for u in units if a in u and b in u]
        if not both:
            continue
        pairs += 1
        k = cohen_kappa([u[a] for u in both], [u[b] for u in both])
        if k == k:
            kappas.append(k)
    return (float(np.mean(kappas)) if kappas else float("nan")), pairs


def krippendorff_alpha(units: Iterable[Unit]) -> float:
    """Krippendorff's alpha for nominal values, any number of annotators, missing values allowed
    (module docstring). NaN when no unit has two values or every pairable value is the same."""
    coded = [_values(u) for u in units]
    coded = [v for v in coded if len(v) >= 2]
    categories = sorted({v for values in coded for v in values}, key=_order)
    if not coded:
        return float("nan")
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    o = np.zeros((k, k))
    for values in coded:
        counts = np.bincount([index[v] for v in values], minlength=k).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(values) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = n * n - float((n_c**2).sum())
    if expected == 0:
        return float("nan")
    observed = o.sum() - np.trace(o)
    return float(1 - (n - 1) * observed / expected)


def _order(value: Any) -> tuple:
    """A total order of answer values: emotions as EMOTIONS, False before True, then by text."""
    if isinstance(value, str) and value in EMOTIONS:
        return (0, EMOTIONS.index(value), "")
    if isinstance(value, bool):
        return (1, int(value), "")
    return (2, 0, str(value))


# ---- the consensus ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """The panel's outcome on one face and item: the value most of them gave, the share of the
    annotators who gave it and the share the rule needs."""

    crop_id: str
    item: str
    value: Any
    share: float
    needed: float
    answers: dict[str, Any]

    @property
    def met(self) -> bool:
        return self.share >= self.needed

    def describe(self) -> str:
        def say(v: Any) -> str:
            return ("present" if v else "absent") if isinstance(v, bool) else str(v)

        who = ", ".join(f"{a} {say(v)}" for a, v in sorted(self.answers.items()))
        return f"{self.item}: {who}"


def consensus(answers: Mapping[str, Any], rule: str = DEFAULT_RULE) -> tuple[Any, float, float]:
    """(value, share, needed) of one face's answers on one item under `rule` (RULES): the value
    most annotators gave (a tie: the first in `_order`), the share of annotators who gave it, and
    the share the rule needs (majority: more than half; unanimous: all). The rule is met when
    share >= needed."""
    check_rule(rule)
    values = _values(answers)
    if not values:
        raise ValueError("no answers")
    counts = Counter(values)
    value = max(sorted(counts, key=_order), key=lambda v: counts[v])
    n = len(values)
    need = n if rule == "unanimous" else n // 2 + 1
    return value, counts[value] / n, need / n


def outcomes(answers: Answers, rule: str = DEFAULT_RULE) -> list[Outcome]:
    """The outcome of every face and item answered by two annotators or more (emotion, then the
    AUs), by face."""
    out = []
    for item in (EMOTION, *AU_ITEMS):
        for crop_id, given in sorted(answers.several(item).items()):
            value, share, needed = consensus(given, rule)
            out.append(Outcome(crop_id, item, value, share, needed, dict(given)))
    return sorted(out, key=lambda o: o.crop_id)


def consensus_tables(found: Sequence[Outcome], image_of: Mapping[str, str]) -> tuple[pa.Table, pa.Table]:
    """The outcomes as emotion_labels and au_labels rows: label_source human, annotator
    CONSENSUS_ANNOTATOR, confidence / probability the share, threshold the share needed."""
    common = {"label_source": "human", "annotator": CONSENSUS_ANNOTATOR}
    emotion_rows, au_rows = [], []
    for o in found:
        if o.crop_id not in image_of:
            continue
        row = {"image_id": image_of[o.crop_id], "crop_id": o.crop_id, **common, "threshold": o.needed}
        if o.item == EMOTION:
            emotion_rows.append({**row, "emotion": o.value, "confidence": o.share})
        else:
            au = int(o.item.removeprefix("AU"))
            au_rows.append(
                {**row, "au": au, "present": bool(o.value), "probability": o.share, "intensity": None}
            )
    return (
        pa.Table.from_pylist(emotion_rows, schema=_writable(EMOTION_LABELS)),
        pa.Table.from_pylist(au_rows, schema=_writable(AU_LABELS)),
    )


def _writable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != "recorded_at"])


def disagreement_rows(
    found: Sequence[Outcome], faces: Mapping[str, Mapping[str, Any]], rule: str, now: dt.datetime
) -> pa.Table:
    """One review_queue row per face with some outcome under the rule (`faces`: crop_id ->
    {image_id, media_path}; a face not in it is left out): priority the share of the face's
    outcomes without consensus, detail who answered what on those."""
    by_face: dict[str, list[Outcome]] = {}
    for o in found:
        by_face.setdefault(o.crop_id, []).append(o)
    rows = []
    for crop_id, its in sorted(by_face.items()):
        missed = [o for o in its if not o.met]
        if not missed or crop_id not in faces:
            continue
        rows.append(
            {
                "queue": QUEUE,
                "crop_id": crop_id,
                "image_id": faces[crop_id]["image_id"],
                "media_path": faces[crop_id]["media_path"],
                "reason": DISAGREEMENT,
                "priority": len(missed) / len(its),
                "detail": f"no {rule} consensus: " + "; ".join(o.describe() for o in missed),
                "model_id": None,
                "queued_at": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=TABLES["review_queue"].schema)


@dataclass(frozen=True)
class ConsensusReport:
    rule: str
    faces: int  # faces with an item answered by two annotators or more
    agreed: int  # of those, faces whose every such item meets the rule
    disagreements: int  # faces with some item under the rule
    queued: int  # review_queue rows added (a face already queued adds none)
    emotion: LabelWrite = field(default_factory=LabelWrite)
    au: LabelWrite = field(default_factory=LabelWrite)

    def summary(self) -> str:
        if not self.faces:
            return "no face answered by two annotators"
        return (
            f"{self.faces} faces answered by several annotators: {self.agreed} with {self.rule} consensus, "
            f"{self.disagreements} without ({self.queued} newly queued for review, reason {DISAGREEMENT})"
        )


def apply_consensus(wh: Warehouse, rule: str = DEFAULT_RULE) -> ConsensusReport:
    """Write the panel's outcomes (consensus rows) and queue the faces without consensus, from the
    answers in the warehouse; the labels first, the queue after them (a review row is answered by
    a human label written after it). Writing the same answers under the same rule adds nothing."""
    check_rule(rule)
    found = outcomes(read_answers(wh), rule)
    several = {o.crop_id for o in found}
    faces = _faces(wh, sorted(several))
    image_of = {c: f["image_id"] for c, f in faces.items()}
    emotion_rows, au_rows = consensus_tables(found, image_of)
    e = wh.append_labels("emotion_labels", emotion_rows)
    a = wh.append_labels("au_labels", au_rows)
    queue = disagreement_rows(found, faces, rule, dt.datetime.now(dt.UTC))
    queued = wh.append("review_queue", queue) if queue.num_rows else 0
    missed = {o.crop_id for o in found if not o.met}
    report = ConsensusReport(
        rule=rule,
        faces=len(several),
        agreed=len(several - missed),
        disagreements=len(missed),
        queued=queued,
        emotion=e,
        au=a,
    )
    if missed:
        log.info("Label Studio consensus: %s", report.summary())
    return report


def _faces(wh: Warehouse, crop_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not crop_ids:
        return {}
    rows = wh.sql(
        "SELECT crop_id, image_id, media_path FROM crops WHERE list_contains($ids, crop_id)",
        {"ids": crop_ids},
    )
    return {r["crop_id"]: r for r in rows.to_pylist()}


# ---- agreement ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemAgreement:
    """The agreement on one item over its faces answered by two annotators or more. `consensus`
    and `disagreements` count those faces by the rule (None for an emotion against the rest,
    which is no label of its own)."""

    item: str
    faces: int
    annotators: int
    answers: int
    percent: float
    kappa: float
    pairs: int  # pairs of annotators sharing a face (kappa: 1 is Cohen's, more is Light's mean)
    alpha: float
    consensus: int | None = None
    disagreements: int | None = None

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if v != v else round(v, 4)

        return {
            "faces": self.faces,
            "annotators": self.annotators,
            "percent_agreement": num(self.percent),
            "kappa": num(self.kappa),
            "alpha": num(self.alpha),
            "consensus": self.consensus,
            "disagreements": self.disagreements,
        }


def item_agreement(
    item: str, units: Mapping[str, Mapping[str, Any]], rule: str | None = None
) -> ItemAgreement:
    """The figures of one item over `units` (crop_id -> {annotator: value}), the faces with two
    answers or more; with `rule`, how many of them meet it."""
    several = [dict(u) for u in units.values() if len(_values(u)) >= 2]
    kappa, pairs = pairwise_kappa(several)
    met = None
    if rule is not None:
        met = 0
        for u in several:
            _, share, needed = consensus(u, rule)
            met += share >= needed
    return ItemAgreement(
        item=item,
        faces=len(several),
        annotators=len({a for u in several for a in u}),
        answers=sum(len(_values(u)) for u in several),
        percent=percent_agreement(several),
        kappa=kappa,
        pairs=pairs,
        alpha=krippendorff_alpha(several),
        consensus=met,
        disagreements=None if met is None else len(several) - met,
    )


def agreement_table(answers: Answers, rule: str = DEFAULT_RULE) -> list[ItemAgreement]:
    """The agreement per item: the emotion, each emotion some annotator chose (against the rest),
    each AU; items no face has two answers for are left out."""
    check_rule(rule)
    rows = []
    emotion = answers.several(EMOTION)
    if emotion:
        rows.append(item_agreement(EMOTION, emotion, rule))
        chosen = {v for u in emotion.values() for v in u.values()}
        for name in (e for e in EMOTIONS if e in chosen):
            one = {c: {a: v == name for a, v in u.items()} for c, u in emotion.items()}
            rows.append(item_agreement(f"{EMOTION}: {name}", one))
    for item in AU_ITEMS:
        units = answers.several(item)
        if units:
            rows.append(item_agreement(item, units, rule))
    return rows


# ---- the report ---------------------------------------------------------------------------------
HEADER = [
    "item",
    "faces",
    "annotators",
    "agreement %",
    "Cohen's κ",
    "Krippendorff's α",
    "consensus",
    "no consensus",
]


def table_rows(rows: Sequence[ItemAgreement]) -> list[list[str]]:
    from models.render import fmt

    def count(v: int | None) -> str:
        return "–" if v is None else str(v)

    return [
        [
            r.item,
            str(r.faces),
            str(r.annotators),
            "n/a" if r.percent != r.percent else f"{100 * r.percent:.1f}",
            fmt(r.kappa) + (" (Light)" if r.pairs > 1 and r.kappa == r.kappa else ""),
            fmt(r.alpha),
            count(r.consensus),
            count(r.disagreements),
        ]
        for r in rows
    ]


def markdown_table(rows: Sequence[ItemAgreement]) -> str:
    """The agreement table alone, as Markdown (Dagster metadata, the CLI)."""
    from models.render import Doc

    doc = Doc([])
    doc.table(HEADER, table_rows(rows))
    return doc.markdown()


def report_dir(wh: Warehouse) -> Path:
    """Where the agreement report lives: `<home>/reports/labelstudio/agreement/`."""
    return Path(wh.home).joinpath(*REPORT_DIR)


@dataclass(frozen=True)
class AgreementReport:
    rule: str
    rows: list[ItemAgreement]
    outcomes: list[Outcome]
    files: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        faces = len({o.crop_id for o in self.outcomes})
        missed = len({o.crop_id for o in self.outcomes if not o.met})
        head = f"{faces} faces answered by two annotators or more ({missed} without {self.rule} consensus)"
        return [head, markdown_table(self.rows).rstrip()] if self.rows else [head]


def write_report(
    wh: Warehouse, rule: str = DEFAULT_RULE, out_dir: str | Path | None = None
) -> AgreementReport:
    """The agreement report (report.md, report.html; `report_dir` unless `out_dir`), replaced whole,
    from the answers in the warehouse."""
    from models.render import Doc, write_folder

    check_rule(rule)
    answers = read_answers(wh)
    rows = agreement_table(answers, rule)
    found = outcomes(answers, rule)
    missed = [o for o in found if not o.met]
    doc = Doc([])
    doc.h(1, "Agreement between Label Studio annotators")
    doc.p(
        f"{len({o.crop_id for o in found})} faces answered by two annotators or more; consensus rule "
        f"{rule!r} ({'more than half of the annotators' if rule == 'majority' else 'every annotator'} give "
        f"one value); {len({o.crop_id for o in missed})} faces without it are queued for review "
        f"(queue {QUEUE!r}, reason {DISAGREEMENT!r})."
    )
    if rows:
        doc.table(HEADER, table_rows(rows))
    else:
        doc.p("No face has two answers yet: give tasks to several annotators (`--overlap`) and pull.")
    doc.ul(
        [
            "faces: answered by two annotators or more for that item; an emotion-only answer is none for the AUs.",
            "agreement %: per face, the share of its pairs of annotators that agree, averaged over the faces.",
            "Cohen's κ: two annotators over the faces both answered; (Light) marks the mean over the pairs of "
            "annotators when there are more than two.",
            "Krippendorff's α: nominal, any number of annotators, missing answers allowed.",
            "n/a: undefined (every answer the same value).",
            "emotion: X rows: chose X or not (each emotion against the rest); consensus is counted on the "
            "emotion itself.",
        ]
    )
    if missed:
        doc.h(2, "Without consensus")
        shown = missed[:DETAIL_LIMIT]
        doc.table(["face", "answers"], [[o.crop_id, o.describe()] for o in shown])
        if len(missed) > DETAIL_LIMIT:
            doc.p(f"... and {len(missed) - DETAIL_LIMIT} more (the review_queue rows list every face).")
    files = write_folder(Path(out_dir) if out_dir else report_dir(wh), doc, "Annotator agreement", {})
    return AgreementReport(rule, rows, found, files)
