"""`ferlab review`, `ferlab pseudo-label`, `ferlab review-queue`: the curation loop's commands."""

from __future__ import annotations

import argparse

from ferlab.cli.common import add_settings_flags, data_home, open_warehouse, settings_from_flags, write_csv
from labeling.curation.settings import PseudoLabelSettings, ReviewSettings


def cmd_review(args: argparse.Namespace) -> int:
    from ferlab.demo import prepare_dagster_home

    # FiftyOne's database: <data root>/fiftyone unless FIFTYONE_DATABASE_DIR is set; each root's
    # own service (labeling.fiftyone.sync), a dataset or database folder of another root refused
    prepare_dagster_home(data_home(args))
    if args.action == "pull":
        from labeling.fiftyone.corrections import pull_corrections

        print(pull_corrections(open_warehouse(args), args.dataset, user=args.user))
        return 0
    from labeling.fiftyone.app import launch_review
    from labeling.fiftyone.sync import sync_fiftyone

    if not args.no_sync:
        print(sync_fiftyone(open_warehouse(args), name=args.dataset))
    # launch_review prints the App's address once it serves
    launch_review(args.dataset, port=args.port, address=args.address, home=data_home(args))
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from labeling.curation.pseudo import pseudo_label

    settings = settings_from_flags(args, PseudoLabelSettings)
    report = pseudo_label(open_warehouse(args), args.task, settings)
    print(report.summary())
    for label, cut in report.thresholds.items():
        if cut is None:
            print(f"  {label:>9}: no pseudo labels (target precision not met on held-out predictions)")
            continue
        low = "-" if cut.lower is None else f"{cut.lower:.3f}"
        up = "-" if cut.upper is None else f"{cut.upper:.3f}"
        print(
            f"  {label:>9}: absent <= {low}, present >= {up}, held-out coverage {cut.coverage:.2f}; "
            f"labeled {report.per_label.get(label)}"
        )
    print(f"report: {report.report['html']}")
    return 0


def cmd_review_queue(args: argparse.Namespace) -> int:
    from labeling.curation.review import build_review_queue, queue_table

    settings = settings_from_flags(args, ReviewSettings)
    wh = open_warehouse(args)
    report = build_review_queue(wh, args.task, settings)
    print(report.summary())
    print(f"report: {report.report['html']}")
    if args.show:
        write_csv(queue_table(wh, report.queue, limit=args.show))
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _add_review(sub) -> None:
    review = sub.add_parser(
        "review",
        help="sync the warehouse into a FiftyOne dataset and open the App for curators; "
        "`review pull` brings their edits back",
        description="`ferlab review` (open): sync, then serve the App. `ferlab review pull`: curators' edited "
        "face emotions (face_emotions) become human labels, faces tagged `reject` are excluded from dataset "
        "versions (removing the tag lifts it), faces tagged `relabel` go to the review queue (and are "
        "excluded until relabeled). Pulling twice adds nothing.",
    )
    review.add_argument("action", nargs="?", choices=["open", "pull"], default="open")
    review.add_argument(
        "--user",
        default="curator",
        help="who curated, for the annotator fiftyone:USER (pull; default curator)",
    )
    review.add_argument("--dataset", default="ferlab", help="FiftyOne dataset name (default ferlab)")
    review.add_argument("--port", type=int, default=5151)
    review.add_argument("--address", default="127.0.0.1")
    review.add_argument("--no-sync", action="store_true", help="open the dataset as it is")
    review.set_defaults(func=cmd_review)


def _add_pseudo_label(sub) -> None:
    pseudo = sub.add_parser(
        "pseudo-label",
        help="label the faces without a human or gold label with the production model, where it is precise",
        description="Thresholds per label are chosen on the model's out-of-fold predictions so that each side "
        "reaches --target-precision; labels go to au_labels / emotion_labels as label_source pseudo. "
        "The flags are labeling.curation.settings.PseudoLabelSettings' fields.",
    )
    pseudo.add_argument("task", choices=["au", "emotion"])
    add_settings_flags(pseudo, PseudoLabelSettings)
    pseudo.set_defaults(func=cmd_pseudo_label)


def _add_review_queue(sub) -> None:
    queue = sub.add_parser(
        "review-queue",
        help="queue faces for curators: unsure, weak label disagrees, low detection score, likely mistake, unique",
        description="The flags are labeling.curation.settings.ReviewSettings' fields.",
    )
    queue.add_argument("task", choices=["au", "emotion"])
    queue.add_argument("--show", type=int, default=20, help="print this many rows, highest priority first")
    add_settings_flags(queue, ReviewSettings)
    queue.set_defaults(func=cmd_review_queue)


PARSERS = {
    "review": _add_review,
    "pseudo-label": _add_pseudo_label,
    "review-queue": _add_review_queue,
}
