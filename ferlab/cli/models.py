"""The models' commands: `ferlab train`, `tune`, `compare-losses`, `pseudo-experiment`, `semi-supervised`,
`active-learning`, `evaluate`, `models`,
`export`, `distill`, `predict`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferlab.cli.common import (
    add_settings_flags,
    check_out_file,
    data_home,
    open_warehouse,
    settings_from_flags,
    write_csv,
)


def _version_or_snapshot(wh, version: str | None) -> str:
    from warehouse.versions import snapshot_dataset_version

    if version:
        return version
    v = snapshot_dataset_version(wh)
    print(f"dataset version {v.version}: {v.n_crops} crops ({'new' if v.created else 'unchanged'})")
    return v.version


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
    wh = open_warehouse(args)
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
    wh = open_warehouse(args)
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
    wh = open_warehouse(args)
    result = compare_losses(wh, _version_or_snapshot(wh, args.version), settings, losses=args.losses)
    print(f"Avg.F1 by loss: {result.avg_f1}; report {result.report['markdown']}")
    return 0


def _au_experiment(args: argparse.Namespace, run, settings_type) -> int:
    """An AU experiment over a dataset version: `run(wh, version, AU training settings, its own
    settings)` from the flags; prints its summary and report."""
    from models.settings import AUTrainingSettings

    training = settings_from_flags(args, AUTrainingSettings)
    experiment = settings_from_flags(args, settings_type)
    wh = open_warehouse(args)
    result = run(wh, _version_or_snapshot(wh, args.version), training, experiment)
    print(result.summary())
    print(f"report: {result.report['markdown']}")
    return 0


def cmd_pseudo_experiment(args: argparse.Namespace) -> int:
    from labeling.curation.experiment import pseudo_label_experiment
    from labeling.curation.settings import PseudoExperimentSettings

    return _au_experiment(args, pseudo_label_experiment, PseudoExperimentSettings)


def cmd_semi_supervised(args: argparse.Namespace) -> int:
    from labeling.curation.semisupervised import semi_supervised_experiment
    from labeling.curation.settings import SemiSupervisedSettings

    return _au_experiment(args, semi_supervised_experiment, SemiSupervisedSettings)


def cmd_active_learning(args: argparse.Namespace) -> int:
    from labeling.curation.active import active_learning_simulation
    from labeling.curation.settings import ActiveLearningSettings

    return _au_experiment(args, active_learning_simulation, ActiveLearningSettings)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.pipeline import evaluate_model, latest_model_id
    from models.tasks import TASKS

    wh = open_warehouse(args)
    target = args.target
    if target in TASKS:
        if not args.version:
            raise ValueError(f"`evaluate {target}` needs --version (see `ferlab version --list`)")
        target = latest_model_id(wh, target, args.version)
    ev = evaluate_model(wh, target)
    print(f"{ev.headline_metric} {ev.headline:.4f}")
    print(f"report: {ev.report['markdown']}  (HTML: {ev.report['html']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from models.registry import decide_promotion, list_models

    wh = open_warehouse(args, writable=bool(args.decide))
    if args.decide:
        print(decide_promotion(wh, args.decide).summary())
    write_csv(list_models(wh, args.task))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.int8:
        return _export_int8(args)
    if args.out is None:
        from warehouse.errors import ConfigError

        raise ConfigError("export VERSION needs --out DIR (or give a model id and --int8)")
    from ferlab.demo import prepare_dagster_home

    prepare_dagster_home(data_home(args))  # FiftyOne's database under the data root unless set
    from labeling.fiftyone.export import export_version

    report = export_version(
        open_warehouse(args, writable=False),
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

    wh = open_warehouse(args)
    path = quantize_int8(wh, args.version, calibration=args.calibration)
    print(f"int8 model: {path}")
    result = compare_compact(wh, args.version)
    print(f"compact table: {result.report['markdown']}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from models.compact import DistillationSettings, compare_compact, distill

    settings = settings_from_flags(args, DistillationSettings)
    wh = open_warehouse(args)
    result = distill(wh, args.model_id, settings)
    print(f"student: {result.onnx} (checkpoint {result.checkpoint})")
    table = compare_compact(wh, args.model_id)
    print(f"compact table: {table.report['markdown']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeling.curation.pseudo import latest_version, resolve_model
    from models.predict import Predictor
    from models.tasks import TASKS
    from warehouse.versions import read_manifest

    wh = open_warehouse(args, writable=False)
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


# ---- parsers ----------------------------------------------------------------------------------
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

    from labeling.curation.settings import SemiSupervisedSettings

    semi = sub.add_parser(
        "semi-supervised",
        help="fewer human labels for the same AU model? labeled gold vs + pseudo labels vs all gold, "
        "per label budget and split",
        description=SemiSupervisedSettings.__doc__ + " The flags are the experiment's, then the AU "
        "training settings (every arm trains with them).",
    )
    semi.add_argument("--version", help="dataset version (default: snapshot the current data)")
    add_settings_flags(semi, SemiSupervisedSettings)
    add_settings_flags(semi, AUTrainingSettings)
    semi.set_defaults(func=cmd_semi_supervised)

    from labeling.curation.settings import ActiveLearningSettings

    active = sub.add_parser(
        "active-learning",
        help="does the review queue spend a curator's labels well? a simulated curator answers the frames "
        "each strategy picks; Avg.F1 against labels spent",
        description=ActiveLearningSettings.__doc__ + " The flags are the simulation's, then the AU training "
        "settings (retrained every round: keep the budget small, e.g. --finetune-epochs 0).",
    )
    active.add_argument("--version", help="dataset version (default: snapshot the current data)")
    add_settings_flags(active, ActiveLearningSettings)
    add_settings_flags(active, AUTrainingSettings)
    active.set_defaults(func=cmd_active_learning)


def _add_export(sub) -> None:
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


DISTILL_HELP = "distill a trained MobileNet AU or emotion model into an alpha-0.25 student (seed 004)"


def _add_distill(sub, training_flags: bool) -> None:
    if not training_flags:  # listed in `ferlab --help`; its flags come with the settings (torch)
        sub.add_parser("distill", help=DISTILL_HELP)
        return
    from models.compact import DistillationSettings

    distill = sub.add_parser(
        "distill",
        help=DISTILL_HELP,
        description=(DistillationSettings.__doc__ or "")
        + " Writes student.pt / student.onnx beside the teacher, then the compact table (fp32, int8, "
        "student on the same held-out faces).",
    )
    distill.add_argument("model_id", help="the teacher: a trained model's id")
    add_settings_flags(distill, DistillationSettings)
    distill.set_defaults(func=cmd_distill)


def _add_train(sub, training_flags: bool) -> None:
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


def _add_evaluate(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="write the evaluation report (Markdown + HTML + plots) and eval_metrics of a trained model",
    )
    evaluate.add_argument("target", help="a model id, or au|emotion with --version for its latest model")
    evaluate.add_argument("--version", help="dataset version (with au|emotion)")
    evaluate.set_defaults(func=cmd_evaluate)


def _add_models(sub) -> None:
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


def _add_predict(sub) -> None:
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


def add_parsers(sub, training_flags: bool = True) -> None:
    """export, distill, train (and with `training_flags` tune, compare-losses, pseudo-experiment,
    semi-supervised, active-learning; without
    them, a bare `distill` and `tune` for `ferlab --help`: their flags import torch), evaluate, models,
    predict."""
    _add_export(sub)
    _add_distill(sub, training_flags)
    _add_train(sub, training_flags)
    _add_evaluate(sub)
    _add_models(sub)
    _add_predict(sub)
