"""The curation loop's reports, in the model reports' style (`models.render`) and beside them, so the
reports server and the version's index page show them: what pseudo-labeling did and what the
review queue holds.

    reports/<version>/pseudo-<task>-<model_id>/report.md, report.html    (`write_pseudo_report`)
    reports/<version>/review-<queue>/report.md, report.html, thumb-*     (`write_review_report`)

Scores (precision, coverage) are in %, as in every report; cuts are probabilities (0-1), review
priorities are in 0-1 (higher first).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from labeling.curation.model_view import CALL_RULES
from models import render
from models.render import Doc, Link, pct

if TYPE_CHECKING:
    from labeling.curation.pseudo import Cut, PseudoLabelReport
    from labeling.curation.review import ReviewReport
    from labeling.curation.settings import PseudoLabelSettings, ReviewSettings

CURATION_SCALE = "Scale: precision and coverage in %; cuts are probabilities (0-1)."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _share(n: int, of: int) -> str:
    return pct(n / of) if of else "n/a"


def _slug(name: str) -> str:
    """A folder name of a queue name ("au:au-x" -> "au-au-x")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "queue"


# ---- pseudo labels ---------------------------------------------------------------------------------
def pseudo_report_dir(home: str | Path, report: PseudoLabelReport) -> Path:
    """`<home>/reports/<version>/pseudo-<task>-<model_id>/`: the version whose faces were labeled."""
    return Path(home) / render.REPORTS / report.dataset_version / f"pseudo-{report.task}-{report.model_id}"


def _cut_cells(cut: Cut | None, two_sided: bool) -> list[str]:
    """A cut's columns: (absent if p <=, present if p >=, their precision %, their support) for AUs,
    (top p >=, precision %, support) for classes; "-" for a side without labels."""

    def num(v: float | None, f=render.fmt) -> str:
        return "-" if v is None else f(v)

    if cut is None:
        return ["-"] * (7 if two_sided else 4)
    upper = [
        num(cut.upper),
        num(cut.precision_upper, pct),
        str(cut.support_upper) if cut.upper is not None else "-",
    ]
    if not two_sided:
        return [*upper, pct(cut.coverage)]
    lower = [
        num(cut.lower),
        num(cut.precision_lower, pct),
        str(cut.support_lower) if cut.lower is not None else "-",
    ]
    return [lower[0], upper[0], lower[1], upper[1], lower[2], upper[2], pct(cut.coverage)]


def _cut_header(two_sided: bool, measured_on: str) -> list[str]:
    if not two_sided:
        return [
            "Top p ≥ (cut)",
            "Precision %",
            f"Support ({measured_on})",
            f"Coverage % ({measured_on})",
        ]
    return [
        "Absent if p ≤",
        "Present if p ≥",
        "Precision absent %",
        "Precision present %",
        f"Support absent ({measured_on})",
        f"Support present ({measured_on})",
        f"Coverage % ({measured_on})",
    ]


def pseudo_doc(report: PseudoLabelReport, settings: PseudoLabelSettings | None = None) -> Doc:
    """The pseudo-label report: the headline (faces labeled, coverage, unmet targets) first; then per
    label the out-of-fold cuts, the precision each side reached, its support, and the labels given
    on the candidate faces; then per source the cuts it got and those chosen on its own
    human-labeled faces."""
    two_sided = CALL_RULES[report.task].multi_label  # each AU has a cut on either side
    labels = list(report.thresholds)
    noun, plural = ("AU", "AUs") if two_sided else ("Class", "Classes")
    coverage = _share(report.labeled_faces, report.faces)
    unmet = report.unmet
    unused = [label for label in labels if not sum(report.per_label.get(label, {}).values())]
    doc = Doc(
        [],
        kind="pseudo labels",
        summary=f"{report.labeled_faces} of {report.faces} candidate faces labeled ({coverage} %), "
        f"{report.rows} label rows; target not met: {', '.join(unmet) or 'none'}"
        + (
            f"; labeled on no face: {', '.join(extra)}"
            if (extra := [k for k in unused if k not in unmet])
            else ""
        )
        + (f"; unverified: {', '.join(report.unverified)}" if report.unverified else ""),
    )
    doc.h(1, f"{report.task.upper()} pseudo labels by {report.model_id}")
    about = [
        f"Task: {report.task}",
        f"Dataset version (faces labeled): {report.dataset_version}",
        f"Model: {report.model_id}",
    ]
    if settings is not None:
        about.append(
            f"Target precision {pct(settings.target_precision)} %, at least {settings.min_support} held-out "
            f"faces beyond a cut; a source is calibrated on its own human labels from "
            f"{settings.min_verified_faces} faces"
            + (f" (lower confidence bound {pct(settings.confidence)} %)" if settings.confidence else "")
        )
    doc.ul([*about, f"Generated: {_now()}", CURATION_SCALE])
    doc.h(2, "Headline")
    doc.table(
        ["Figure", "Value"],
        [
            ["Candidate faces (no human or gold label)", str(report.faces)],
            ["Faces labeled (at least one pseudo label)", f"{report.labeled_faces}"],
            ["Coverage (% of candidate faces labeled)", f"**{coverage}**"],
            ["Label rows", f"{report.rows} ({report.added} new, {report.updated} updated)"],
            [f"{plural} without pseudo labels (target precision not met)", ", ".join(unmet) or "none"],
            [f"{plural} labeled on no candidate face", ", ".join(unused) or "none"],
            ["Sources kept out of dataset versions (unverified)", ", ".join(report.unverified) or "none"],
            ["Earlier labels withdrawn", str(report.withdrawn)],
            ["Unreadable crops (skipped)", str(report.skipped)],
        ],
    )

    doc.h(2, f"Per {noun if two_sided else noun.lower()}")
    doc.p(
        "Cuts, precision, support and held-out coverage: on the model's out-of-fold predictions (faces "
        "of people its fold model never saw). Labeled: on the candidate faces, each source with the "
        "cuts of its calibration (below); coverage there is the share of the candidate faces."
    )
    if two_sided:
        given_head = ["Labeled absent", "Labeled present", "Candidate faces labeled %"]
    else:
        given_head = ["Labeled", "Candidate faces labeled %"]
    rows = []
    for label in labels:
        counts = report.per_label.get(label, {})
        if two_sided:
            n_abs, n_pres = int(counts.get("absent", 0)), int(counts.get("present", 0))
            given = [str(n_abs), str(n_pres), _share(n_abs + n_pres, report.faces)]
        else:
            n = int(counts.get("labeled", 0))
            given = [str(n), _share(n, report.faces)]
        rows.append([label, *_cut_cells(report.thresholds[label], two_sided), *given])
    doc.table([noun, *_cut_header(two_sided, "held-out"), *given_head], rows)
    one_sided = [
        k
        for k, c in report.thresholds.items()
        if two_sided and c is not None and (c.lower is None or c.upper is None)
    ]
    if one_sided:
        doc.p(
            "One side only (the other cannot reach the target): "
            + ", ".join(
                f"{k} ({'present' if report.thresholds[k].upper is not None else 'absent'})"
                for k in one_sided
            )
            + "."
        )

    doc.h(2, "Targets not met")
    missed = {"out-of-fold predictions": unmet} | {
        f"{source}'s human-labeled faces": [label for label, cut in cuts.items() if cut is None]
        for source, cuts in report.source_thresholds.items()
    }
    doc.table(
        [
            "Cuts chosen on",
            f"{plural} where " + ("neither side reaches" if two_sided else "the cut misses") + " the target",
        ],
        [[where, ", ".join(labels_missed) or "none"] for where, labels_missed in missed.items()],
        text=True,
    )
    doc.p(
        "Such a label gets no pseudo label on the faces those cuts apply to: its precision stays under "
        "the target, or too few faces lie beyond the cut."
    )

    doc.h(2, "Per source")
    doc.table(
        ["Source", "Cuts from", "Verified (reaches dataset versions)", "Label rows"],
        [
            [source, v.get("calibration", "-"), render.plain(bool(v.get("verified"))), str(v.get("rows", 0))]
            for source, v in report.per_source.items()
        ],
        text=True,
    )
    doc.p(
        "Cuts from out-of-fold: the table above; human:<source>:<n>: chosen on the model's predictions "
        "of n human-labeled faces of that source (below)."
    )
    for source, cuts in report.source_thresholds.items():
        doc.h(3, f"Cuts on {source}'s human-labeled faces")
        doc.table(
            [noun, *_cut_header(two_sided, f"{source} faces")],
            [[label, *_cut_cells(cut, two_sided)] for label, cut in cuts.items()],
        )
    return doc


def write_pseudo_report(
    home: str | Path, report: PseudoLabelReport, settings: PseudoLabelSettings | None = None
) -> dict[str, Any]:
    """The pseudo-label report (report.md, report.html) into `pseudo_report_dir`, replaced whole;
    the version's index page lists it. Returns {"markdown", "html", "plots"}.

    Raises:
        OSError: the folder cannot be written.
    """
    title = f"{report.task.upper()} pseudo labels by {report.model_id}"
    return render.write_folder(pseudo_report_dir(home, report), pseudo_doc(report, settings), title, {})


# ---- the review queue -----------------------------------------------------------------------------
EXAMPLES = 5  # highest-priority rows shown per reason
THUMB_BYTES = 1 << 20  # a crop larger than this is shown without its picture
PRIORITY_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
REASON_TEXT = {
    "between_thresholds": "the model is unsure, so no pseudo label: between an AU's cuts, or the top class under its cut",
    "weak_disagrees": "the weak label (scraped folder) is not the model's top class",
    "low_detection_score": "the face detector's score is low",
    "likely_mistake": "the face's label disagrees with the model",
    "most_unique": "far from every other face in the model's embedding",
    "disagreement": "Label Studio annotators disagree (queued by `ferlab labelstudio agreement`)",
}


def review_report_dir(home: str | Path, report: ReviewReport) -> Path:
    """`<home>/reports/<version>/review-<queue>/` (the queue name made a folder name)."""
    return Path(home) / render.REPORTS / report.dataset_version / f"review-{_slug(report.queue)}"


def _top(reason: np.ndarray, priority: np.ndarray, crop_ids: list[str], r: str) -> np.ndarray:
    """The rows of reason `r`, highest priority first (ties by crop id), at most `EXAMPLES`."""
    at = np.flatnonzero(reason == r)
    order = np.lexsort((np.array([crop_ids[i] for i in at], dtype=object).astype(str), -priority[at]))
    return at[order][:EXAMPLES]


def _histogram(priority: np.ndarray) -> list[str]:
    counts, _ = np.histogram(np.clip(priority, 0, 1), bins=PRIORITY_BINS)
    return [str(int(c)) for c in counts]


def review_doc(
    report: ReviewReport,
    rows: pa.Table,
    reasons: Sequence[str],
    thumbs: Mapping[str, str],
    settings: ReviewSettings | None = None,
) -> Doc:
    """The review-queue report of this build's rows (`rows`: review_queue rows): the headline,
    rows per reason, how their priorities spread, and the top rows of each reason (`thumbs`:
    crop id -> a picture's file name in the report folder)."""
    reason = np.array(rows.column("reason").to_pylist(), dtype=object)
    priority = np.array(rows.column("priority").to_pylist(), dtype=np.float64)
    crop_ids = rows.column("crop_id").to_pylist()
    detail = rows.column("detail").to_pylist()
    faces = len(set(crop_ids))
    task = report.queue.split(":", 1)[0] if ":" in report.queue else report.model_id.split("-", 1)[0]
    found = {r: int((reason == r).sum()) for r in reasons}
    doc = Doc(
        [],
        kind="review queue",
        summary=f"{rows.num_rows} rows over {faces} faces ({report.added} new): "
        + (", ".join(f"{r} {n}" for r, n in found.items() if n) or "nothing queued"),
    )
    doc.h(1, f"Review queue {report.queue}")
    about = [
        f"Task: {task}",
        f"Dataset version: {report.dataset_version} ({report.faces} faces)",
        f"Model: {report.model_id}",
    ]
    if settings is not None:
        about.append(
            f"Detection score under {settings.min_detection_score}, label-vs-model disagreement from "
            f"{settings.mistake_threshold}, {settings.unique_top} most unique faces"
            + (", FiftyOne Brain" if settings.brain else "")
        )
    doc.ul(
        [
            *about,
            f"Generated: {_now()}",
            "Priority: 0-1, higher first (what it measures depends on the reason).",
        ]
    )
    doc.h(2, "Headline")
    doc.table(
        ["Figure", "Value"],
        [
            ["Rows found by this build", f"**{rows.num_rows}**"],
            ["Faces among them", f"{faces} ({_share(faces, report.faces)} % of the version's faces)"],
            ["Rows new to the queue", str(report.added)],
            ["Notes", "; ".join(report.notes) or "none"],
        ],
    )
    doc.h(2, "Rows per reason")
    per_reason = []
    for r in reasons:
        mine = priority[reason == r]
        per_reason.append(
            [
                r,
                str(found[r]),
                str(len({c for c, x in zip(crop_ids, reason) if x == r})),
                f"{np.median(mine):.2f}" if len(mine) else "-",
                f"{mine.max():.2f}" if len(mine) else "-",
                REASON_TEXT.get(r, ""),
            ]
        )
    doc.table(
        ["Reason", "Rows", "Faces", "Median priority", "Top priority", "Why a face is queued"], per_reason
    )
    doc.h(2, "Priority distribution (rows per priority band)")
    bands = [f"{a:.1f}-{b:.1f}" for a, b in zip(PRIORITY_BINS[:-1], PRIORITY_BINS[1:])]
    doc.table(
        ["Reason", *bands],
        [[r, *_histogram(priority[reason == r])] for r in reasons if found[r]]
        + [["all", *_histogram(priority)]],
    )
    doc.h(2, "Examples per reason")
    doc.p(f"The {EXAMPLES} highest-priority rows of each reason; every row is in the review_queue table.")
    for r in reasons:
        top = _top(reason, priority, crop_ids, r)
        if not len(top):
            continue
        doc.h(3, r)
        doc.table(
            ["Face", "Crop id", "Priority", "Detail"],
            [
                [
                    Link(crop_ids[i][:12], thumbs[crop_ids[i]], image=True) if crop_ids[i] in thumbs else "-",
                    crop_ids[i],
                    f"{priority[i]:.2f}",
                    detail[i] or "-",
                ]
                for i in top
            ],
            text=True,
        )
    return doc


def write_review_report(
    home: str | Path,
    report: ReviewReport,
    rows: pa.Table,
    reasons: Sequence[str],
    settings: ReviewSettings | None = None,
) -> dict[str, Any]:
    """The review-queue report (report.md, report.html and a thumbnail of each example face, copied
    from its crop: at most `EXAMPLES` per reason) into `review_report_dir`, replaced whole; the
    version's index page lists it. Returns {"markdown", "html", "plots"}.

    Raises:
        OSError: the folder cannot be written.
    """
    home = Path(home)
    reason = np.array(rows.column("reason").to_pylist(), dtype=object)
    priority = np.array(rows.column("priority").to_pylist(), dtype=np.float64)
    crop_ids = rows.column("crop_id").to_pylist()
    media = rows.column("media_path").to_pylist()
    thumbs: dict[str, str] = {}
    files: render.Plots = {}
    for r in reasons:
        for i in _top(reason, priority, crop_ids, r):
            source = home / media[i] if media[i] else None
            if crop_ids[i] in thumbs or source is None or not source.is_file():
                continue
            if source.stat().st_size > THUMB_BYTES:
                continue
            name = f"thumb-{_slug(crop_ids[i])[:40]}{source.suffix.lower()}"
            thumbs[crop_ids[i]] = name
            files[name] = lambda path, src=source: shutil.copyfile(src, path)
    doc = review_doc(report, rows, reasons, thumbs, settings)
    return render.write_folder(review_report_dir(home, report), doc, f"Review queue {report.queue}", files)
