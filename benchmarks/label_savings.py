"""Fewer human labels for the same model? `make quality`'s runs of the two experiments on the
small demo's DISFA people (rendered with --seed, ingested, auto-labeled by YuNet, snapshotted):

- the semi-supervised protocol (labeling.curation.semisupervised): labeled gold vs labeled gold
  + pseudo labels vs all gold, per label budget and split; goal: at 20 % labels the pseudo labels
  close at least half of the gap to the ceiling, and the paired gain exceeds its spread;
- active learning, simulated (labeling.curation.active): the review queue vs uncertainty vs
  random; goal: the queue reaches random's final figure with at most 60 % of its labels.

    .venv/bin/python -m benchmarks.label_savings [--seed 1] [--only semi|active] [--work DIR]
        [--set image_size=144 ...] [--semi splits=3 ...] [--active seeds=3 ...]

Training settings: the demo's AU settings (ferlab.demo.DEMO_AU) for the semi-supervised protocol,
head-only training for the simulation (it retrains every round), each with --set's changes.
Prints each experiment's summary and report path, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from ferlab.demo import DEMO_AU
from ferlab.demodata import generate_demo_data
from ferlab.demotruth import ingest_demo_sources
from labeling.curation.active import active_learning_simulation
from labeling.curation.semisupervised import semi_supervised_experiment
from labeling.curation.settings import ActiveLearningSettings, SemiSupervisedSettings
from models.settings import AUTrainingSettings
from warehouse import Warehouse

# The simulation retrains once per round, strategy, seed and fold: the head on frozen features
ACTIVE_TRAINING = {**DEMO_AU, "finetune_epochs": 0, "head_epochs": 30}


def prepare(work: Path, seed: int) -> tuple[Warehouse, str]:
    """The demo's DISFA people ingested, auto-labeled and snapshotted, once per --work and seed."""
    home, done = work / f"home-{seed}", work / f".prepared-{seed}"
    wh = Warehouse(home)
    if done.exists():
        return wh, done.read_text().strip()
    sources = generate_demo_data(work / f"render-{seed}", seed=seed, size="small")
    version = ingest_demo_sources(wh, sources, scraped=False)
    done.write_text(version)
    return wh, version


def _pairs(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)  # numbers, true / false, lists
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1, help="the demo render's seed (the tests use 0)")
    parser.add_argument("--only", choices=["semi", "active"], help="run one experiment")
    parser.add_argument("--work", type=Path, help="keep the data root here (default: a temp folder)")
    parser.add_argument("--set", nargs="*", default=[], metavar="K=V", help="AU training settings' changes")
    parser.add_argument("--semi", nargs="*", default=[], metavar="K=V", help="SemiSupervisedSettings fields")
    parser.add_argument(
        "--active", nargs="*", default=[], metavar="K=V", help="ActiveLearningSettings fields"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("models.train").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="ferlab-label-savings-"))
    wh, version = prepare(work, args.seed)
    changes = _pairs(args.set)
    figures: dict[str, object] = {"seed": args.seed, "version": version}
    if args.only in (None, "semi"):
        started = time.perf_counter()
        training = AUTrainingSettings(**{**DEMO_AU, **changes})
        result = semi_supervised_experiment(
            wh, version, training, SemiSupervisedSettings(**_pairs(args.semi))
        )
        print(result.summary())
        print(f"report: {result.report['markdown']}")
        figures["semi_supervised"] = {
            "budgets": result.table,
            "seconds": round(time.perf_counter() - started),
        }
    if args.only in (None, "active"):
        started = time.perf_counter()
        training = AUTrainingSettings(**{**ACTIVE_TRAINING, **changes})
        sim = active_learning_simulation(wh, version, training, ActiveLearningSettings(**_pairs(args.active)))
        print(sim.summary())
        print(f"report: {sim.report['markdown']}")
        figures["active_learning"] = {
            "curves": sim.curves,
            "saving": sim.saving,
            "seconds": round(time.perf_counter() - started),
        }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
