"""`ferlab`: the platform's library functions, outside Dagster.

ferlab --home DIR ingest fer2013 CSV
ferlab --home DIR ingest disfa ROOT [--stride N] [--subject SN001 ...]
ferlab --home DIR ingest images DIR [--batch NAME]
ferlab --home DIR sql "SELECT source, count(*) FROM images GROUP BY 1"   # read-only unless --write
ferlab --home DIR analyze VIDEO|IMAGE|DIR|CAMERA_INDEX [--out F.parquet|F.csv] [--video OUT.mp4] [--average N] ...
ferlab --home DIR analyze-disfa SUBJECT [--camera left|right] [analyze flags]  # vs its gold AU labels
ferlab --home DIR doctor [--repair]        # damaged table parts, schema parts, temp files of killed writers
ferlab --home DIR version [--list]          # snapshot crops + labels + splits as a dataset version
ferlab --home DIR train au|emotion [--architecture A] [--loss bce|lsep|pr] [--finetune-epochs N] ...
ferlab --home DIR train au|emotion --from-settings best_settings.json|run.json [flags that override it]
ferlab --home DIR tune au|emotion [--version V] [--trials N] [--search lr dropout ...] [training flags]
ferlab --home DIR compare-losses [--losses bce lsep pr] [AU training flags]
ferlab --home DIR pseudo-experiment [--target-precision 0.9] [AU training flags]  # gold vs gold + pseudo
ferlab --home DIR semi-supervised [--label-fractions 0.2 0.4] [--splits 3] [AU training flags]  # labels saved
ferlab --home DIR active-learning [--strategies queue random] [--rounds 5] [AU training flags]  # simulated
ferlab --home DIR review [pull]            # FiftyOne App for curators; pull their edits and tags back
ferlab --home DIR export VERSION [--format coco yolo tables] --out DIR
ferlab --home DIR export MODEL_ID --int8 [--calibration static|dynamic]
ferlab --home DIR distill MODEL_ID [--alpha 0.25] [--temperature 2] [--epochs 12] ...
ferlab --home DIR evaluate MODEL_ID | evaluate au|emotion --version V
ferlab --home DIR models [--task au] [--decide MODEL_ID]  # models, production, promotion decisions
ferlab --home DIR predict MODEL_ID|au|emotion [--version V | --all-crops] [--out F.parquet]
ferlab --home DIR pseudo-label au|emotion [--target-precision 0.9] ...
ferlab --home DIR review-queue au|emotion [--show N] ...
ferlab --home DIR demo            # demo data + every ingestion asset through Dagster
ferlab --home DIR labelstudio serve [--port N] | push [--queue Q] | pull | status   # $LABEL_STUDIO_API_KEY
    ferlab demo-data OUT [--seed N] [--size small|medium]   # faces with rendered AUs, real formats

One module per command group, each with its parsers beside its handlers (`PARSERS`, command -> the
function adding its parser, + `cmd_*`): ingest (ingest, detect, autolabel), analysis (analyze,
analyze-disfa, face-detector), curation (review, pseudo-label, review-queue), labelstudio, data
(sql, doctor, weights, dev, version, demo, demo-data), models (export, distill, train, tune,
compare-losses, pseudo-experiment, semi-supervised, active-learning, evaluate, models, predict); what they share is in common. Heavy
packages (torch, dagster, ultralytics, fiftyone) are imported by the handlers, not here.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ferlab.cli import analysis, curation, data, ingest, labelstudio, models
from ferlab.cli.common import (
    add_settings_flags,
    check_out_file,
    configure_logging,
    describe_error,
    settings_from_flags,
)
from ferlab.cli.ingest import run_detect_cli
from ferlab.cli.models import training_settings

__all__ = [
    "add_settings_flags",
    "build_parser",
    "check_out_file",
    "describe_error",
    "main",
    "run_detect_cli",
    "settings_from_flags",
    "training_settings",
]

EPILOG = """\
data root: --home, else $FERLAB_HOME, else ./var. It holds media/ (images by content hash),
tables/<name>/*.parquet and warehouse.duckdb (views: images, emotion_labels, au_labels,
rejects, near_duplicates; label tables also as <table>_history). Re-running an ingestion adds
nothing; a label corrected at its source supersedes the old one; bad input lands in `rejects`.
Errors are one line on stderr and a non-zero exit (2: bad input or setting, 1: anything else);
--debug shows the traceback.
"""

# Commands whose flags are generated from settings classes that import torch: their parsers are
# built in full only when one of them is the command run (else a bare entry for `ferlab --help`).
TRAINING_COMMANDS = (
    "train",
    "tune",
    "compare-losses",
    "pseudo-experiment",
    "semi-supervised",
    "active-learning",
    "distill",
)


def _add_parsers(sub, group, names: list[str] | None = None) -> None:
    """Add a command group's commands `names` (default: all, in its `PARSERS` order) to `sub`."""
    for name in names or group.PARSERS:
        group.PARSERS[name](sub)


def build_parser(training_flags: bool = True) -> argparse.ArgumentParser:
    """The `ferlab` parser. `training_flags=False` leaves out the flags generated from the training
    settings (they import torch), for commands that do not train."""
    parser = argparse.ArgumentParser(
        prog="ferlab",
        description="FER data platform: ingest DISFA, FER-2013 and scraped images; query the warehouse.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", help="data root (default: $FERLAB_HOME, else ./var)")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, and debug log lines"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `ferlab --help` has always listed them
    _add_parsers(sub, ingest, ["ingest", "detect"])
    _add_parsers(sub, analysis)
    _add_parsers(sub, ingest, ["autolabel"])
    _add_parsers(sub, curation, ["review"])
    _add_parsers(sub, data, ["sql", "doctor", "weights", "dev"])
    _add_parsers(sub, labelstudio)
    _add_parsers(sub, data, ["version"])
    models.add_parsers(sub, training_flags=training_flags)
    _add_parsers(sub, curation, ["pseudo-label", "review-queue"])
    _add_parsers(sub, data, ["demo", "demo-data"])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(training_flags=any(a in TRAINING_COMMANDS for a in argv)).parse_args(argv)
    configure_logging(debug=args.debug)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`ferlab sql ... | head`): not an error. Point stdout at devnull so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message, code = describe_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code
