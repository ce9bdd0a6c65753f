"""The demo renderer's truth (`truth/faces.csv`, ferlab.demodata) matched to the data root's
FER-2013 and scraped crops, and AU pseudo labels scored against it: faces no AU model trained on
(they carry no AU label), so their truth is the only honest measure of the pseudo labels.

    truth = truth_faces(wh, sources / "truth" / "faces.csv")
    score = score_au_pseudo_labels(wh, truth, model_id, aus=[1, 2, 4])
    print(score.table())                      # per AU: present / absent precision, coverage
    score.overall().present_precision         # all AUs, both sources

The truth holds the rendered, unrounded intensities. The DISFA label files the AU model learns
from hold them rounded to integers (ferlab.demodata), so a DISFA frame is labeled present from 1.5
on: scoring with `threshold=DISFA_LABEL_RULE` asks the same question of every source; the default,
AU_PRESENT_THRESHOLD (2) on the unrounded value, counts a resting residual of 1.5-1.9 as absent
although the DISFA files taught it as present.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from labeling.detection.geometry import iou
from warehouse import Warehouse
from warehouse.schemas import AU_PRESENT_THRESHOLD
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped
from warehouse.versions import snapshot_dataset_version

SOURCES = ("fer2013", "scraped")  # the sources the renderer drew that carry no AU label
MIN_IOU = 0.5  # a scraped crop is the drawn face its detection overlaps this much
# The DISFA label files hold integer intensities (the rendered one rounded), so a DISFA frame is
# labeled present from intensity 1.5 on; FER-2013 and scraped truth keep the unrounded value.
DISFA_LABEL_RULE = 1.5


def ingest_demo_sources(
    wh: Warehouse,
    sources: Path,
    subjects: list[str] | None = None,
    stride: int = 1,
    scraped: bool = True,
) -> str:
    """The small demo's rendered sources (DISFA: every subject or `subjects`, every `stride`-th
    frame; FER-2013; with `scraped` the first scraped batch) ingested into `wh`, auto-labeled by
    YuNet and snapshotted: the data root the truth is matched against, and the tests' and
    benchmarks' data roots. Returns the dataset version."""
    ingest_disfa(wh, sources / "disfa", subjects=subjects, stride=stride, show_progress=False)
    ingest_fer2013(wh, sources / "fer2013.csv", show_progress=False)
    if scraped:
        ingest_scraped(wh, sources / "scraped" / "batch-001", show_progress=False)
    images = select_images(wh)
    autolabel(wh, images, load_detector("yunet"), show_progress=False)
    return snapshot_dataset_version(wh).version


@dataclass(frozen=True)
class TruthFace:
    """One drawn face a crop was matched to: its source and rendered AU intensities."""

    source: str
    intensities: Mapping[int, float]
    identity: str

    def present(self, au: int, threshold: float = AU_PRESENT_THRESHOLD) -> bool:
        return self.intensities[au] >= threshold


def truth_faces(wh: Warehouse, truth_csv: Path) -> dict[str, TruthFace]:
    """crop_id -> the drawn face, for the FER-2013 and scraped crops of the data root (a scraped crop
    matched by IoU >= MIN_IOU of its detection with exactly one drawn face; others are left out)."""
    with open(truth_csv, newline="") as f:
        truth = list(csv.DictReader(f))
    aus = [int(c[2:]) for c in truth[0] if c.startswith("au")]
    rows = wh.sql(
        "SELECT c.crop_id, i.source, i.source_uri, d.x1, d.y1, d.x2, d.y2 FROM crops c JOIN images i USING (image_id) "
        "LEFT JOIN detections d USING (detection_id) WHERE i.source IN ('fer2013', 'scraped')"
    ).to_pylist()
    by_path: dict[str, list[dict]] = {}
    for t in truth:
        by_path.setdefault(t["path"], []).append(t)
    out = {}
    for r in rows:
        uri = r["source_uri"]
        key = (
            "fer2013.csv#" + uri.split("#", 1)[1]
            if r["source"] == "fer2013"
            else uri[uri.index("scraped/") :]
        )
        faces = by_path.get(key, [])
        if r["source"] == "scraped":
            drawn = [[float(t[k]) for k in ("x1", "y1", "x2", "y2")] for t in faces]
            overlap = iou((r["x1"], r["y1"], r["x2"], r["y2"]), drawn)
            faces = [t for t, v in zip(faces, overlap, strict=True) if v >= MIN_IOU]
        if len(faces) == 1:
            t = faces[0]
            out[r["crop_id"]] = TruthFace(r["source"], {au: float(t[f"au{au}"]) for au in aus}, t["identity"])
    return out


def curator_au_labels(
    wh: Warehouse,
    truth: Mapping[str, TruthFace],
    crop_ids: Iterable[str],
    annotator: str = "simulated-curator",
    threshold: float = DISFA_LABEL_RULE,
) -> int:
    """A simulated curator answers the faces `crop_ids` with the truth: a `human` AU label per
    drawn AU (present at `threshold`, as the DISFA label files count it). Returns rows written."""
    wanted = [c for c in crop_ids if c in truth]
    image_of = dict(
        zip(
            *wh.sql(
                "SELECT crop_id, image_id FROM crops WHERE crop_id IN (SELECT unnest($ids))", {"ids": wanted}
            )
            .to_pydict()
            .values()
        )
    )
    rows = [
        {
            "image_id": image_of[c],
            "crop_id": c,
            "au": au,
            "intensity": float(v),
            "present": v >= threshold,
            "probability": None,
            "label_source": "human",
            "annotator": annotator,
        }
        for c in wanted
        for au, v in truth[c].intensities.items()
    ]
    return wh.append_labels("au_labels", pa.Table.from_pylist(rows)).added if rows else 0


@dataclass
class Tally:
    """Pseudo labels of one AU (or all) on one source (or both), against the truth."""

    faces: int = 0  # scored faces (x AUs when several are pooled)
    n_present: int = 0  # labels "present"
    true_present: int = 0  # ... truly present
    n_absent: int = 0
    true_absent: int = 0

    @property
    def present_precision(self) -> float | None:
        return self.true_present / self.n_present if self.n_present else None

    @property
    def absent_precision(self) -> float | None:
        return self.true_absent / self.n_absent if self.n_absent else None

    @property
    def coverage(self) -> float:
        """Share of the (face, AU) decisions that got a label."""
        return (self.n_present + self.n_absent) / self.faces if self.faces else 0.0

    def figures(self) -> dict[str, float | int | None]:
        """Precision and count of each side, and coverage, rounded for a benchmark's JSON line."""
        return {
            "present_precision": None if self.present_precision is None else round(self.present_precision, 3),
            "n_present": self.n_present,
            "absent_precision": None if self.absent_precision is None else round(self.absent_precision, 3),
            "n_absent": self.n_absent,
            "coverage": round(self.coverage, 3),
        }

    def add(self, other: Tally) -> None:
        for k in ("faces", "n_present", "true_present", "n_absent", "true_absent"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class PseudoScore:
    """A model's AU pseudo labels scored against the truth: one Tally per (AU, source)."""

    model_id: str
    aus: list[int]
    cells: dict[tuple[int, str], Tally] = field(default_factory=dict)

    def tally(self, au: int | None = None, source: str | None = None) -> Tally:
        """One AU's (or, with None, all AUs') labels on one source (None: both)."""
        out = Tally()
        for (a, s), t in self.cells.items():
            if (au is None or a == au) and (source is None or s == source):
                out.add(t)
        return out

    def overall(self, source: str | None = None) -> Tally:
        return self.tally(None, source)

    def table(self, sources: Iterable[str | None] = (None,), unmet: Iterable[str] = ()) -> str:
        """Per AU and source: precision of the present and absent labels (with their counts) and
        coverage; then the overall row. `unmet`: labels ("AU9") with no thresholds (noted)."""
        unmet = set(unmet)
        fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
        lines = [
            f"{'AU':>5} {'source':>8} {'pos prec':>9} {'n pos':>6} {'neg prec':>9} {'n neg':>6} {'coverage':>9}"
        ]
        for au in [*self.aus, None]:
            for source in sources:
                t = self.tally(au, source)
                name = f"AU{au}" if au is not None else "all"
                note = "  (no pseudo labels: target not met)" if f"AU{au}" in unmet else ""
                lines.append(
                    f"{name:>5} {source or 'both':>8} {fmt(t.present_precision)} {t.n_present:6d} "
                    f"{fmt(t.absent_precision)} {t.n_absent:6d} {t.coverage:9.2f}{note}"
                )
        return "\n".join(lines)


def score_au_pseudo_labels(
    wh: Warehouse,
    truth: Mapping[str, TruthFace],
    model_id: str,
    aus: Sequence[int],
    threshold: float = AU_PRESENT_THRESHOLD,
) -> PseudoScore:
    """`model_id`'s AU pseudo labels (au_labels, label_source pseudo, not withdrawn) on the faces of `truth`
    (see `truth_faces`), per AU of `aus` (every AU the model predicts, so that an AU left unlabeled
    counts against coverage) and source; an AU truly present at intensity >= `threshold`
    (DISFA_LABEL_RULE: as the DISFA label files round it)."""
    labels = wh.sql(
        "SELECT crop_id, au, present FROM au_labels WHERE label_source = 'pseudo' AND annotator = ? "
        "AND calibration IS DISTINCT FROM 'withdrawn'",
        [model_id],
    ).to_pylist()
    labels = [r for r in labels if r["crop_id"] in truth]
    score = PseudoScore(model_id, list(aus))
    n_faces = {s: sum(f.source == s for f in truth.values()) for s in SOURCES}
    for au in aus:
        for s in SOURCES:
            score.cells[(au, s)] = Tally(faces=n_faces[s])
    for r in labels:
        if r["au"] not in aus:
            continue
        face = truth[r["crop_id"]]
        t = score.cells[(r["au"], face.source)]
        if r["present"]:
            t.n_present += 1
            t.true_present += face.present(r["au"], threshold)
        else:
            t.n_absent += 1
            t.true_absent += not face.present(r["au"], threshold)
    return score
