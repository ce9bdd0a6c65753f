"""AU pseudo-label precision on faces no model trained on: the curation test's data root (the small
demo rendered, DISFA + FER-2013 + scraped ingested, auto-labeled by YuNet, snapshotted), the AU
model trained on the DISFA people with the curation test's settings, promoted, then the
FER-2013 and scraped faces pseudo-labeled (target precision 0.9) and scored against the
renderer's truth (ferlab.demotruth; present when intensity >= 2).

Per training variant (one per --degrade value, the rest equal) it prints, per AU and source,
the precision of the present and absent pseudo labels and their coverage; then the diagnosis:
the thresholds (chosen on out-of-fold DISFA predictions) and the mean probability per source and
truth-intensity band (0, (0, 1), [1, 2), >= 2), what the wrong labels' truth was, and the
precision with present counted as the DISFA label files count it (rounded intensity >= 2, i.e.
>= 1.5: what the model was taught); last one JSON line per variant.

    .venv/bin/python -m benchmarks.pseudo_label_precision [--degrade 0 0.5] [--image-size 112]
        [--set finetune_epochs=5 ...] [--work DIR]

--work keeps the data root there (reused by a later run: the render, ingestion and auto-labels
take about a minute; a variant trained before is trained again, replacing its model). Each
variant trains 3 folds (~1-2 minutes at 112 px on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ferlab.demodata import generate_demo_data
from ferlab.demotruth import (
    DISFA_LABEL_RULE,
    SOURCES,
    PseudoScore,
    TruthFace,
    ingest_demo_sources,
    score_au_pseudo_labels,
    truth_faces,
)
from labeling.curation.pseudo import PseudoLabelReport, candidate_faces, face_predictions, pseudo_label
from labeling.curation.settings import PseudoLabelSettings
from models.pipeline import evaluate_model, train_model
from models.predict import Predictor
from models.registry import decide_promotion
from models.settings import AUTrainingSettings
from warehouse import Warehouse

# tests/test_curation.py's AU_SETTINGS (test_models.py's budget) but `degrade`, the variants' one
# difference (the test trains with degrade=0.5)
TEST_SETTINGS = dict(image_size=112, finetune_epochs=3, head_epochs=30, loss="bce", finetune_lr=1e-4, folds=3)
BANDS = ("0", "(0,1)", "[1,2)", ">=2")  # truth intensity bands


def prepare(work: Path) -> Path:
    """The data root of the curation test's `home` fixture (without its models), made once."""
    home = work / "home"
    if (work / ".prepared").exists():
        return home
    if work.exists():
        shutil.rmtree(work)
    sources = generate_demo_data(work / "sources", seed=0, size="small")
    ingest_demo_sources(Warehouse(home), sources)
    shutil.copy(sources / "truth" / "faces.csv", home / "truth.csv")
    (work / ".prepared").touch()
    return home


def _band(v: float) -> str:
    return "0" if v == 0 else "(0,1)" if v < 1 else "[1,2)" if v < 2 else ">=2"


def diagnose(wh: Warehouse, truth: dict[str, TruthFace], report: PseudoLabelReport) -> None:
    """Thresholds, mean probability per truth-intensity band, and the truth of the wrong labels."""
    predictor = Predictor.load(wh, report.model_id)
    faces = candidate_faces(wh, "au", report.dataset_version)
    predicted, _ = face_predictions(wh, predictor, faces)  # cached by pseudo_label: no inference
    crop_ids = predicted.column("crop_id").to_pylist()
    rows = [i for i, c in enumerate(crop_ids) if c in truth]
    print("mean probability by truth intensity band [faces]; thresholds lower/upper (out-of-fold DISFA)")
    header = "".join(f"{name:>16}" for name in BANDS)
    print(
        f"{'AU':>5} {'source':>8} {'lower':>6} {'upper':>6}{header}   wrong present: truth bands | wrong absent"
    )
    for label, cut in report.thresholds.items():
        au = int(label[2:])
        p = predicted.column(label).to_numpy(zero_copy_only=False)
        for source in SOURCES:
            mine = [i for i in rows if truth[crop_ids[i]].source == source]
            v = np.array([truth[crop_ids[i]].intensities[au] for i in mine])
            q = p[mine]
            bands = np.array([_band(x) for x in v])
            cells = ""
            for name in BANDS:
                m = bands == name
                cells += f"{q[m].mean():10.3f} [{m.sum():3d}]" if m.any() else f"{'-':>16}"
            lo = cut.lower if cut and cut.lower is not None else None
            up = cut.upper if cut and cut.upper is not None else None
            wrong_pos = bands[(q >= up) & (v < 2)] if up is not None else np.array([])
            wrong_neg = bands[(q <= lo) & (v >= 2)] if lo is not None else np.array([])
            wp = ",".join(f"{n}:{int((wrong_pos == n).sum())}" for n in BANDS[:3] if (wrong_pos == n).any())
            f = lambda t: f"{t:6.3f}" if t is not None else f"{'-':>6}"  # noqa: E731
            print(f"{label:>5} {source:>8} {f(lo)} {f(up)}{cells}   {wp or '-'} | {len(wrong_neg)}")


def run_variant(home: Path, settings: AUTrainingSettings, truth_csv: Path) -> tuple[PseudoScore, dict]:
    wh = Warehouse(home)
    version = wh.sql("SELECT version FROM dataset_versions ORDER BY created_at").column("version")[-1].as_py()
    started = time.perf_counter()
    run = train_model(wh, version, settings)
    trained = time.perf_counter() - started
    ev = evaluate_model(wh, run.model_id)
    decision = decide_promotion(wh, run.model_id)
    # labeled by this model whether or not it beat an earlier variant (the production model)
    report = pseudo_label(wh, "au", PseudoLabelSettings(target_precision=0.9, model_id=run.model_id))
    truth = truth_faces(wh, truth_csv)
    score = score_au_pseudo_labels(wh, truth, run.model_id, [int(k[2:]) for k in report.thresholds])
    print(f"\n=== {settings.model_dump(exclude_defaults=True)}: {run.model_id}")
    print(
        f"trained in {trained:.0f} s; {ev.headline_metric} {ev.headline:.3f} on held-out DISFA people; "
        f"promoted: {decision.promoted} ({decision.reason})"
    )
    print(report.summary())
    n = {s: sum(f.source == s for f in truth.values()) for s in SOURCES}
    print(f"scored against the renderer's truth: {n['fer2013']} FER-2013 + {n['scraped']} scraped faces")
    print(score.table(sources=(*SOURCES, None), unmet=report.unmet))
    diagnose(wh, truth, report)
    rounded = score_au_pseudo_labels(wh, truth, run.model_id, score.aus, threshold=DISFA_LABEL_RULE)
    print(f"scored as the DISFA label files round (present from intensity {DISFA_LABEL_RULE}):")
    for source in (*SOURCES, None):
        t = rounded.overall(source)
        print(
            f"  {source or 'both':>8}: present precision {t.present_precision or 0:.3f} ({t.n_present}), "
            f"absent precision {t.absent_precision or 0:.3f} ({t.n_absent})"
        )
    summary = {
        "settings": settings.model_dump(exclude_defaults=True),
        "model_id": run.model_id,
        "headline": round(ev.headline, 3),
        "train_s": round(trained),
    }
    for source in (*SOURCES, None):
        summary[source or "overall"] = score.overall(source).figures()
    t = rounded.overall()
    summary["overall_disfa_rule"] = {
        "present_precision": round(t.present_precision or 0, 3),
        "absent_precision": round(t.absent_precision or 0, 3),
    }
    return score, summary


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--degrade", type=float, nargs="+", default=[0.0, 0.5], help="one variant per value")
    parser.add_argument("--image-size", type=int, default=TEST_SETTINGS["image_size"])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="AU training settings over the test's (JSON values), e.g. --set finetune_epochs=5 pos_weight=true",
    )
    parser.add_argument("--work", type=Path, help="keep (and reuse) the data root here")
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = {**TEST_SETTINGS, "image_size": args.image_size, **overrides}
    with tempfile.TemporaryDirectory(prefix="ferlab-precision-") as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        home = prepare(work)
        print(f"data root {home} ready in {time.perf_counter() - started:.0f} s")
        summaries = []
        for degrade in args.degrade:
            settings = AUTrainingSettings(**base, **({"degrade": degrade} if degrade else {}))
            _, summary = run_variant(home, settings, home / "truth.csv")
            summaries.append(summary)
    print()
    for s in summaries:
        print(json.dumps(s))
    return summaries


if __name__ == "__main__":
    main()
