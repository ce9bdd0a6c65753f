"""`ferlab labelstudio serve | push | pull | status | agreement`: Label Studio, its server, its sync
and the agreement between its annotators."""

from __future__ import annotations

import argparse
import os

from ferlab.cli.common import data_home, open_warehouse, record_materialization


def _labelstudio_client(args: argparse.Namespace):
    from labeling.labelstudio.sync import LabelStudioClient, LabelStudioSettings

    return LabelStudioClient(LabelStudioSettings.from_env(url=args.url))


def cmd_labelstudio_serve(args: argparse.Namespace) -> int:
    from labeling.labelstudio.server import (
        ADMIN_USER,
        DATA_SUBDIR,
        HOST,
        PASSWORD_FILE,
        find_executable,
        serve,
        server_env,
    )

    home = data_home(args).resolve()
    server_env(
        home, os.environ.get("LABEL_STUDIO_API_KEY", "")
    )  # a missing or bad key: one line, before anything
    find_executable()
    home.mkdir(parents=True, exist_ok=True)
    print(
        f"Label Studio on http://{HOST}:{args.port} (data: {home / DATA_SUBDIR}; sign in as {ADMIN_USER} with "
        f"$LABEL_STUDIO_PASSWORD, else the password in {home / DATA_SUBDIR / PASSWORD_FILE}; Ctrl-C to stop)",
        flush=True,
    )
    serve(home, port=args.port)  # execs the server: does not return


def cmd_labelstudio_push(args: argparse.Namespace) -> int:
    from assets.labelstudio import push_metadata
    from labeling.labelstudio.sync import push_faces, queue_views, queued_faces

    wh = open_warehouse(args)
    rows = queued_faces(wh, args.queue)
    views = {} if args.no_predictions else queue_views(wh, rows)
    report = push_faces(wh, rows, views, client=_labelstudio_client(args), overlap=args.overlap)
    print(report.summary())
    record_materialization(
        wh.home, "label_studio_tasks", push_metadata(wh, len(rows), report), "ferlab labelstudio push"
    )
    return 0


def cmd_labelstudio_pull(args: argparse.Namespace) -> int:
    from assets.labelstudio import pull_metadata
    from labeling.labelstudio.agreement import write_report
    from labeling.labelstudio.sync import pull_annotations

    wh = open_warehouse(args)
    report = pull_annotations(wh, client=_labelstudio_client(args), consensus=args.consensus)
    print(report.summary())
    agreement = write_report(wh, args.consensus)  # as the asset does
    record_materialization(
        wh.home, "label_studio_annotations", pull_metadata(report, agreement), "ferlab labelstudio pull"
    )
    return 0


def cmd_labelstudio_agreement(args: argparse.Namespace) -> int:
    from labeling.labelstudio.agreement import write_report

    # the report goes under the data root unless --out says where
    report = write_report(open_warehouse(args, writable=args.out is None), args.consensus, args.out)
    for line in report.lines():
        print(line)
    print(f"report: {report.files['markdown']} (and report.html)")
    return 0


def cmd_labelstudio_status(args: argparse.Namespace) -> int:
    from labeling.labelstudio.sync import project_status

    client = _labelstudio_client(args)
    me = client.check()
    print(f"Label Studio at {client.settings.url}: signed in as {me['email']} (user {me['id']})")
    project_id = client.find_project()
    if project_id is None:
        print("no face project yet: `ferlab labelstudio push` creates it")
        return 0
    for line in project_status(open_warehouse(args, writable=False), client, project_id).lines():
        print(line)
    return 0


# ---- parsers ----------------------------------------------------------------------------------
def _add_labelstudio(sub) -> None:
    ls = sub.add_parser(
        "labelstudio",
        help="Label Studio: run the server, push queued faces as tasks, pull annotations as human labels",
        description="The server runs from its own virtualenv (`make labelstudio-setup`) on 127.0.0.1 with its "
        "data under <home>/labelstudio/. Clients find it at $LABEL_STUDIO_URL (default http://127.0.0.1:8089); "
        "$LABEL_STUDIO_API_KEY is both the admin's token (set it before the first `serve`) and the clients' "
        "token. It is never printed.",
    )
    ls_sub = ls.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = ls_sub.add_parser("serve", help="run the server in the foreground (Ctrl-C stops it)")
    serve.add_argument("--port", type=int, default=8089)
    serve.set_defaults(func=cmd_labelstudio_serve)
    push = ls_sub.add_parser(
        "push",
        help="push the review_queue's faces as tasks (both production models' calls pre-filled, their "
        "probabilities shown; queue, reasons, priority, weak label and source as columns); a face with a task "
        "on the server adds nothing, one whose task was deleted there is pushed again",
    )
    push.add_argument("--queue", help="only this queue (default: every queued face)")
    push.add_argument(
        "--no-predictions",
        action="store_true",
        help="push without the models' views (nothing pre-filled, no probabilities)",
    )
    push.add_argument(
        "--overlap",
        type=int,
        metavar="N",
        help="give each task to N annotators (applied to the project; default: as the project has it, "
        "a new project 1)",
    )
    pull = ls_sub.add_parser(
        "pull",
        help="write submitted annotations as human labels (updated ones supersede; skipped add nothing; AUs "
        "only when answered); those outside the label config become rejects; faces several annotators "
        "answered take their consensus, those without one are queued (reason disagreement)",
    )
    agreement = ls_sub.add_parser(
        "agreement",
        help="the agreement between annotators per AU and emotion (percent, Cohen's kappa, Krippendorff's "
        "alpha) over the faces several answered, from the warehouse: report.md / report.html",
    )
    agreement.add_argument(
        "--out", help="the report's folder (default: <home>/reports/labelstudio/agreement)"
    )
    agreement.set_defaults(func=cmd_labelstudio_agreement)
    for parser_ in (pull, agreement):
        parser_.add_argument(
            "--consensus",
            choices=("majority", "unanimous"),
            default="majority",
            help="when several annotators answered a face, the value more than half of them (majority) or "
            "all of them (unanimous) gave wins; without it the face gets no human label from them "
            "(default: majority)",
        )
    status = ls_sub.add_parser(
        "status",
        help="check the server and the token; count tasks and annotations; say how the server's tasks differ "
        "from those recorded",
    )
    for parser_, func in (
        (push, cmd_labelstudio_push),
        (pull, cmd_labelstudio_pull),
        (status, cmd_labelstudio_status),
    ):
        parser_.add_argument(
            "--url", help="the server (default: $LABEL_STUDIO_URL, else http://127.0.0.1:8089)"
        )
        parser_.set_defaults(func=func)


PARSERS = {
    "labelstudio": _add_labelstudio,
}
