"""Dataset versions, AU and emotion models, their evaluation reports, the loss comparison, the
hyper-parameter searches and the compact (int8, distilled) models.
Training and evaluation assets are partitioned by dataset version; each is a thin call into
models.pipeline (the same functions `ferlab train` / `ferlab evaluate` use)."""

from pathlib import Path

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.automation import (
    FOLLOW_UPSTREAM,
    TRAIN_NEW_VERSION,
    TRAINING_POOL,
    TRAINING_STEP_TAGS,
    WEEKLY_SNAPSHOT,
)
from assets.config import SettingsConfig, config_fields, settings_config, settings_of
from assets.metadata import per_label_metadata, report_metadata, table_metadata
from assets.partitions import dataset_versions
from assets.resources import WarehouseResource
from labeling.curation.active import active_learning_simulation
from labeling.curation.experiment import pseudo_label_experiment
from labeling.curation.semisupervised import ARMS, semi_supervised_experiment
from labeling.curation.settings import (
    ActiveLearningSettings,
    PseudoExperimentSettings,
    SemiSupervisedSettings,
)
from models.compact import DistillationSettings, compare_compact, distill, quantize_int8, why_no_student
from models.pipeline import (
    ModelRun,
    check_exports,
    compare_losses,
    evaluate_model,
    held_out_headline,
    latest_model_id,
    load_run,
    report_folder,
    train_model,
)
from models.settings import AUTrainingSettings, EmotionTrainingSettings, TrainingSettings
from models.tasks import get_task
from models.tuning import TuningSettings, read_trials, tune
from warehouse.reports import report_url
from warehouse.store import quote_literal as sql_literal
from warehouse.versions import snapshot_dataset_version

GROUP = "models"
CROP_ASSETS = ["fer2013_crops", "disfa_crops", "scraped_crops"]


@asset(group_name=GROUP, deps=CROP_ASSETS, kinds={"parquet", "duckdb"}, automation_condition=WEEKLY_SNAPSHOT)
def dataset_version(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """A snapshot of the usable face crops with their labels (human > gold > pseudo > weak) and
    splits; its content hash is the version id, registered as a `dataset_versions` partition."""
    wh = warehouse.get()
    version = snapshot_dataset_version(wh)
    context.instance.add_dynamic_partitions(dataset_versions.name, [version.version])
    context.log.info(f"dataset version {version.version} ({'new' if version.created else 'unchanged'})")
    counts = wh.sql(
        "SELECT source, split, count(*) AS crops, count(emotion) AS emotion_labelled, "
        f"count(au12) AS au_labelled FROM dataset_manifest WHERE version = {sql_literal(version.version)} "
        "GROUP BY ALL ORDER BY ALL"
    )
    return MaterializeResult(
        metadata={
            "version": MetadataValue.text(version.version),
            "new_version": MetadataValue.bool(version.created),
            "dagster/row_count": MetadataValue.int(version.n_crops),
            "by_source_and_split": table_metadata(counts, max_rows=50),
            "counts": MetadataValue.json(version.counts),
        }
    )


# ---- checks, declared on the assets whose run they judge -----------------------------------
def _export_check_spec(task: str) -> AssetCheckSpec:
    # Blocking: a model with non-finite weights or an ONNX export that disagrees must not be evaluated.
    return AssetCheckSpec(f"{task}_model_finite_and_exports_agree", asset=f"{task}_model", blocking=True)


def _export_check(task: str, run: ModelRun) -> AssetCheckResult:
    """The run's weights are finite and its ONNX export gives the checkpoint's outputs."""
    exports = check_exports(run)
    return AssetCheckResult(
        check_name=f"{task}_model_finite_and_exports_agree",
        passed=bool(exports["weights_finite"] and exports["onnx_max_abs_diff"] <= 1e-4),
        metadata={**exports, "model_id": run.model_id},
    )


def _floor_check(task: str, model_id: str, ev) -> AssetCheckResult:
    """The headline metric beats the trivial baseline evaluate_model scored on the same held-out
    faces. Not blocking: a weak model is still worth its report; the check flags it in the UI."""
    floor = next(r["value"] for r in ev.metrics if r["fold"] is None and r["metric"] == "trivial_baseline")
    return AssetCheckResult(
        check_name=f"{task}_beats_trivial_baseline",
        passed=bool(ev.headline > floor),
        metadata={"model_id": model_id, ev.headline_metric: ev.headline, "trivial_baseline": floor},
    )


AUModelConfig = settings_config(AUTrainingSettings, "AUModelConfig")
EmotionModelConfig = settings_config(EmotionTrainingSettings, "EmotionModelConfig")
LossComparisonConfig = settings_config(
    AUTrainingSettings,
    "LossComparisonConfig",
    losses=(list[str], Field(["bce", "lsep", "pr"], description="the AU losses to compare")),
)

PseudoExperimentConfig = settings_config(
    AUTrainingSettings, "PseudoExperimentConfig", **config_fields(PseudoExperimentSettings)
)
ActiveLearningConfig = settings_config(
    AUTrainingSettings, "ActiveLearningConfig", **config_fields(ActiveLearningSettings)
)
SemiSupervisedConfig = settings_config(
    AUTrainingSettings, "SemiSupervisedConfig", **config_fields(SemiSupervisedSettings)
)


def _train(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: SettingsConfig
) -> MaterializeResult:
    settings = config.settings()
    run = train_model(warehouse.get(), context.partition_key, settings)
    return MaterializeResult(
        metadata=_model_metadata(run, warehouse.root()),
        check_results=[_export_check(settings.task.name, run)],
    )


def _model_metadata(run: ModelRun, home: Path) -> dict:
    info = run.info
    headline = held_out_headline(run)
    report = report_folder(run)
    return {
        "model_id": MetadataValue.text(run.model_id),
        headline.metric: MetadataValue.float(round(headline.value, 4)),
        "trivial_baseline": MetadataValue.float(round(headline.baseline, 4)),
        "architecture": MetadataValue.text(info["network"]["architecture"]),
        "backbone_weights": MetadataValue.text(info["weights_source"]),
        "protocol": MetadataValue.text(info["protocol"]),
        "faces": MetadataValue.int(info["n_faces"]),
        "training_seconds": MetadataValue.float(round(info["seconds"], 1)),
        "train_images_per_s": MetadataValue.float(round(info["train_images_per_s"], 1)),
        "best_val_loss_per_fold": MetadataValue.json(
            {str(f["fold"]): round(f["best_val_loss"], 4) for f in info["folds"]}
        ),
        # the report the model's <task>_eval_report asset writes (it follows this asset)
        "report_html": MetadataValue.url(report_url(report / "report.html")),
        "version_reports": MetadataValue.url(report_url(report.parent / "index.html")),
        "checkpoint": MetadataValue.path(_under(run.checkpoint, home)),
        "onnx": MetadataValue.path(_under(run.onnx, home)),
    }


def _under(path: Path, home: Path) -> str:
    """A path under the data root as it is relative to the root: a copied root keeps its links."""
    return Path(path).resolve().relative_to(Path(home).resolve()).as_posix()


def _model_asset(task: str):
    """The asset decorator of a task's model: one partition per dataset version, trained once
    per new version, one training at a time, its export check declared on it."""
    return asset(
        name=f"{task}_model",
        group_name=GROUP,
        deps=[dataset_version],
        partitions_def=dataset_versions,
        kinds={"pytorch", "onnx"},
        automation_condition=TRAIN_NEW_VERSION,
        pool=TRAINING_POOL,
        op_tags=TRAINING_STEP_TAGS,
        check_specs=[_export_check_spec(task)],
    )


@_model_asset("au")
def au_model(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: AUModelConfig
) -> MaterializeResult:
    """Action Unit detector (seeds 000/002): backbone -> GAP -> BN -> ReLU -> Dropout -> Linear ->
    sigmoid over the 8 DISFA AUs, two-stage transfer learning, subject-exclusive k-fold."""
    return _train(context, warehouse, config)


@_model_asset("emotion")
def emotion_model(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: EmotionModelConfig
) -> MaterializeResult:
    """7-class emotion classifier: the MobileNetV2 transfer recipe with a softmax head (default)
    or the seed-003 CNN on 48 px gray faces (architecture fer2013_cnn); seed 004's class weights."""
    return _train(context, warehouse, config)


def _report_asset(task: str, upstream):
    @asset(
        name=f"{task}_eval_report",
        group_name=GROUP,
        deps=[upstream],
        partitions_def=dataset_versions,
        kinds={"markdown", "html"},
        automation_condition=FOLLOW_UPSTREAM,
        check_specs=[AssetCheckSpec(f"{task}_beats_trivial_baseline", asset=f"{task}_eval_report")],
        description=f"Evaluation report of the latest {task} model of the dataset version: Markdown + HTML "
        "with plots; every number also in `eval_metrics`.",
    )
    def _report(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        wh = warehouse.get()
        model_id = latest_model_id(wh, task, context.partition_key)
        ev = evaluate_model(wh, model_id)
        markdown = Path(ev.report["markdown"])
        return MaterializeResult(
            metadata={
                "model_id": MetadataValue.text(model_id),
                ev.headline_metric: MetadataValue.float(round(ev.headline, 4)),
                "per_label": per_label_metadata(get_task(task), ev.metrics),
                **report_metadata(markdown, wh.home),
                "dagster/row_count": MetadataValue.int(len(ev.metrics)),
            },
            check_results=[_floor_check(task, model_id, ev)],
        )

    return _report


au_eval_report = _report_asset("au", au_model)
emotion_eval_report = _report_asset("emotion", emotion_model)


# An experiment over one dataset version: launched by hand, trains in the training pool, writes a report.
experiment_asset = asset(
    group_name=GROUP,
    deps=[dataset_version],
    partitions_def=dataset_versions,
    kinds={"pytorch", "markdown"},
    pool=TRAINING_POOL,
    op_tags=TRAINING_STEP_TAGS,
)


@experiment_asset
def au_loss_comparison(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: LossComparisonConfig
) -> MaterializeResult:
    """Seed 000's experiment, repeatable on any dataset version: BCE, LSEP and the
    precision-recall loss trained on the same subject-exclusive folds, side by side."""
    result = compare_losses(warehouse.get(), context.partition_key, config.settings(), losses=config.losses)
    return MaterializeResult(
        metadata={
            "avg_f1_by_loss": MetadataValue.json({k: round(v, 4) for k, v in result.avg_f1.items()}),
            "model_ids": MetadataValue.json(result.model_ids),
            **report_metadata(result.report["markdown"], warehouse.root()),
        }
    )


@experiment_asset
def au_pseudo_label_experiment(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: PseudoExperimentConfig
) -> MaterializeResult:
    """Does pseudo-labeling help? Per subject-exclusive fold, the AU model on gold labels only and
    on gold + the pseudo labels of that fold's gold model, tested on the same held-out gold faces."""
    experiment = settings_of(config, PseudoExperimentSettings)
    result = pseudo_label_experiment(warehouse.get(), context.partition_key, config.settings(), experiment)
    return MaterializeResult(
        metadata={
            "experiment_id": MetadataValue.text(result.experiment_id),
            "metric": MetadataValue.text(result.metric),
            "scores": MetadataValue.json({k: round(v, 4) for k, v in result.scores.items()}),
            "gain": MetadataValue.float(round(result.gain, 4)),
            "per_au_f1_pooled": MetadataValue.json(
                {arm: {k: round(v, 4) for k, v in f1.items()} for arm, f1 in result.per_au_f1.items()}
            ),
            "pseudo_labeled_faces_per_fold": MetadataValue.json([a["faces"] for a in result.pseudo_per_fold]),
            **report_metadata(result.report["markdown"], warehouse.root()),
        }
    )


@experiment_asset
def au_semi_supervised_experiment(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: SemiSupervisedConfig
) -> MaterializeResult:
    """Fewer human labels for the same AU model? Per subject-exclusive fold, split and label
    budget: the labeled people's gold only, + the pseudo labels of a teacher trained on them for
    the other training people (gold hidden), and every person's gold (the ceiling)."""
    experiment = settings_of(config, SemiSupervisedSettings)
    result = semi_supervised_experiment(
        warehouse.get(),
        context.partition_key,
        config.settings(),
        experiment,
        on_trial=lambda t: context.log.info(
            f"{t.fraction:.0%} labeled, split {t.split}, fold {t.fold}: done ({len(t.labeled_groups)} people)"
        ),
    )
    budgets = pa.table(
        {
            "labeled": [f"{r['fraction']:.0%}" for r in result.table],
            **{arm: [round(r[arm], 4) for r in result.table] for arm in ARMS},
            "gap_closed": [round(r["gap_closed"], 4) for r in result.table],
            "paired_gain": [round(r["paired_gain"], 4) for r in result.table],
            "paired_spread": [round(r["paired_spread"], 4) for r in result.table],
        }
    )
    return MaterializeResult(
        metadata={
            "experiment_id": MetadataValue.text(result.experiment_id),
            "metric": MetadataValue.text(result.metric),
            "budgets": table_metadata(budgets),
            "trials": MetadataValue.int(len(result.trials)),
            **report_metadata(result.report["markdown"], warehouse.root()),
        }
    )


@experiment_asset
def au_active_learning_simulation(
    context: AssetExecutionContext, warehouse: WarehouseResource, config: ActiveLearningConfig
) -> MaterializeResult:
    """Does the review queue spend a curator's labels well? A simulated curator answers the frames
    each strategy (the review queue, uncertainty, random) picks with their gold labels; the AU
    model is retrained each round and scored on held-out people."""
    result = active_learning_simulation(
        warehouse.get(),
        context.partition_key,
        config.settings(),
        settings_of(config, ActiveLearningSettings),
        on_round=lambda r: context.log.info(f"{r.strategy} seed {r.seed} fold {r.fold}: {r.labels} labels"),
    )
    curves = pa.table(
        {
            "strategy": list(result.curves),
            "labels": [c["labels"][-1] for c in result.curves.values()],
            result.metric: [round(c["mean"][-1], 4) for c in result.curves.values()],
            "share_of_random_labels": [
                None if result.saving.get(n) is None else round(result.saving[n], 3) for n in result.curves
            ],
        }
    )
    return MaterializeResult(
        metadata={
            "experiment_id": MetadataValue.text(result.experiment_id),
            "final_figures": table_metadata(curves),
            **report_metadata(result.report["markdown"], warehouse.root()),
        }
    )


# ---- seed 004's Bayesian hyper-parameter search, one asset per task ------------------------
AUTuningConfig = settings_config(AUTrainingSettings, "AUTuningConfig", **config_fields(TuningSettings))
EmotionTuningConfig = settings_config(
    EmotionTrainingSettings, "EmotionTuningConfig", **config_fields(TuningSettings)
)


def _tuning_asset(task: str, config_type: type[SettingsConfig]):
    """`<task>_tuning`: per dataset version, Optuna's TPE search (models.tuning) around the config's
    training settings; launched by hand (no automation: a search costs `trials` trainings)."""

    @asset(
        name=f"{task}_tuning",
        group_name=GROUP,
        deps=[dataset_version],
        partitions_def=dataset_versions,
        kinds={"pytorch", "parquet", "markdown"},
        pool=TRAINING_POOL,
        op_tags=TRAINING_STEP_TAGS,
        description=f"Seed 004's Bayesian hyper-parameter search of the {task} model (Optuna TPE + median "
        "pruner, 10 trials by default) minimising the validation loss, never on the test split: the trials "
        "table, the best configuration as settings JSON (`ferlab train "
        f"{task} --from-settings` trains it) and a report under tuning/<version>/<study id>/.",
    )
    def _tuning(context: AssetExecutionContext, warehouse: WarehouseResource, config: config_type):  # type: ignore[valid-type]
        base: TrainingSettings = config.settings()  # type: ignore[attr-defined]
        search = TuningSettings(**{n: getattr(config, n) for n in TuningSettings.model_fields})
        result = tune(warehouse.get(), context.partition_key, base, search)
        return MaterializeResult(
            metadata={
                "study_id": MetadataValue.text(result.study_id),
                "best_value": MetadataValue.float(round(result.best_value, 6)),
                "best_trial": MetadataValue.int(result.best_trial),
                "best_params": MetadataValue.json(result.best_params),
                "trials": table_metadata(read_trials(result.directory), max_rows=200),
                "dagster/row_count": MetadataValue.int(len(result.trials)),
                "best_settings": MetadataValue.path(str(result.best_settings_path)),
                "train_best": MetadataValue.text(result.train_command()),
                **report_metadata(result.report["markdown"], warehouse.root()),
            }
        )

    return _tuning


au_tuning = _tuning_asset("au", AUTuningConfig)
emotion_tuning = _tuning_asset("emotion", EmotionTuningConfig)


# ---- seed 004's compact models, one asset per task -----------------------------------------
CompactConfig = settings_config(
    DistillationSettings,
    "CompactConfig",
    calibration=(
        str,
        Field("static", description="int8: static (calibrated; dynamic if it fails) or dynamic"),
    ),
    student=(bool, Field(True, description="also distill the alpha-0.25 student (seed 004)")),
)


def _compact_asset(task: str, upstream):
    """`<task>_compact`: per dataset version, the latest model's int8 ONNX and distilled student
    (models.compact) and their table; launched by hand (the student is a training)."""

    @asset(
        name=f"{task}_compact",
        group_name=GROUP,
        deps=[upstream],
        partitions_def=dataset_versions,
        kinds={"onnx", "pytorch", "markdown"},
        pool=TRAINING_POOL,
        op_tags=TRAINING_STEP_TAGS,
        description=f"Seed 004's compact versions of the latest {task} model of the dataset version: "
        "model.int8.onnx (ONNX Runtime static quantization calibrated on the version's training faces), "
        "the alpha-0.25 student distilled at temperature 2, and a table of size, CPU latency (batch 1 "
        "and 64) and the task metric of fp32, int8 and student on the same held-out faces.",
    )
    def _compact(context: AssetExecutionContext, warehouse: WarehouseResource, config: CompactConfig):  # type: ignore[valid-type]
        wh = warehouse.get()
        model_id = latest_model_id(wh, task, context.partition_key)
        quantize_int8(wh, model_id, calibration=config.calibration)  # type: ignore[attr-defined]
        no_student = why_no_student(load_run(wh, model_id)) if config.student else "not asked for"  # type: ignore[attr-defined]
        if no_student is None:
            distill(wh, model_id, config.settings())  # type: ignore[attr-defined]
        else:
            context.log.warning(f"no student: {no_student}")
        result = compare_compact(wh, model_id)
        return MaterializeResult(
            metadata={
                "model_id": MetadataValue.text(model_id),
                "student": MetadataValue.text(no_student or "distilled"),
                "held_out": MetadataValue.text(f"{result.n_faces} faces: {result.held_out}"),
                "table": MetadataValue.json(result.rows),
                **report_metadata(result.report["markdown"], warehouse.root()),
            }
        )

    return _compact


au_compact = _compact_asset("au", au_model)
emotion_compact = _compact_asset("emotion", emotion_model)
