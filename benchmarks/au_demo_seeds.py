"""The demo's AU model across demo seeds: for each seed, render the small demo, ingest its DISFA
videos, auto-label them (YuNet), snapshot a dataset version and train + evaluate the AU model
with the demo's training budget (`ferlab.demo.DEMO_AU`), subject-exclusive 3-fold.

Per seed and AU it prints F1 two ways, against the always-present baseline of the same faces:
the seeds' protocol (F1 per fold, mean over folds; a fold without positives of an AU scores 0)
and pooled (one F1 over every fold's held-out predictions, each thresholded by its own fold),
with the folds that had no positives. One JSON object per seed, then a table.

    .venv/bin/python -m benchmarks.au_demo_seeds [--seeds 0 1 2] [--image-size 112] ...
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ferlab.demo import DEMO_AU
from ferlab.demodata import generate_demo_data
from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from models.evaluation import overall, per_label
from models.pipeline import evaluate_model, train_model
from models.settings import AUTrainingSettings
from warehouse import Warehouse
from warehouse.sources.disfa import ingest_disfa
from warehouse.versions import snapshot_dataset_version


def run_seed(seed: int, root: Path, settings: AUTrainingSettings) -> dict:
    started = time.perf_counter()
    sources = generate_demo_data(root / "sources", seed=seed, size="small")
    wh = Warehouse(root / "home")
    ingest_disfa(wh, sources / "disfa", show_progress=False)
    images = select_images(wh)
    autolabel(wh, images, load_detector("yunet"), show_progress=False)
    version = snapshot_dataset_version(wh).version
    prepared = time.perf_counter()
    run = train_model(wh, version, settings)
    trained = time.perf_counter()
    ev = evaluate_model(wh, run.model_id)
    per_au = {
        label: {k: round(v, 3) for k, v in figures.items()}
        for label, figures in per_label(ev.metrics).items()
    }
    return {
        "seed": seed,
        "headline": ev.headline_metric,
        "avg_f1_fold_mean": round(overall(ev.metrics, "avg_f1"), 3),
        "avg_f1_pooled": round(overall(ev.metrics, "avg_f1_pooled"), 3),
        "trivial": round(overall(ev.metrics, "trivial_baseline"), 3),
        "per_au": per_au,
        "prepare_s": round(prepared - started, 1),
        "train_s": round(trained - prepared, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="AU training settings over the demo's (JSON values), e.g. --set image_size=160 loss='\"pr\"'",
    )
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    settings = AUTrainingSettings(**{**DEMO_AU, **overrides})
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"au-seed{seed}-") as tmp:
            result = run_seed(seed, Path(tmp), settings)
        print(json.dumps(result), flush=True)
        results.append(result)
    labels = list(results[0]["per_au"])
    print(f"\nAU model, demo budget {settings.model_dump(exclude_defaults=True)}; F1 pooled (per-fold mean)")
    print("| seed | Avg.F1 pooled (per-fold mean) | always present | " + " | ".join(labels) + " |")
    print("|---|---|---|" + "---|" * len(labels))
    for r in results:
        cells = [
            f"{a['f1_pooled']:.2f} ({a['f1']:.2f}) vs {a['f1_all_present']:.2f}" for a in r["per_au"].values()
        ]
        print(
            f"| {r['seed']} | {r['avg_f1_pooled']:.3f} ({r['avg_f1_fold_mean']:.3f}) | {r['trivial']:.3f} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
