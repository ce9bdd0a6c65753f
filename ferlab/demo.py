"""`ferlab demo` (`make demo`): the rendered demo data (ferlab.demodata) under <home>/sources,
then every job through Dagster, in the instance `make dev` shows: ingest and auto-label each
source, sync FiftyOne, snapshot a dataset version, train + evaluate + promote the AU and emotion
models, pseudo-label and queue faces for review (pushed to Label Studio when its server answers),
and analyze the video of a DISFA subject the AU model held out. `run_demo(train=False)` stops
after the ingest and review jobs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ferlab.runstorage import POSTGRES_STORAGE_YAML, check_postgres, postgres_url

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The demo's training budget (a few minutes on 2 CPU cores): smaller inputs, a few fine-tuning epochs
# at a higher learning rate than the seeds' 1e-5. `ferlab train` and the assets default to the seeds'.
# Fields of models.settings.AUTrainingSettings / EmotionTrainingSettings (`demo_training` checks them).
# 144 px keeps the brow and nose detail (AU1/2/4/9) that 112 px blurs; pos_weight and
# threshold_prior: each AU is present on a minority of the frames, and a fold's validation data
# are a few people, whose faces alone would set the thresholds. The headline is pooled over the
# folds' held-out people: five people per fold make a per-fold F1 noisy.
DEMO_AU = {
    "image_size": 144,
    "finetune_epochs": 5,
    "finetune_lr": 3e-4,
    "pos_weight": True,
    "threshold_prior": 20,
    "headline": "avg_f1_pooled",
}
DEMO_EMOTION = {"image_size": 96, "finetune_epochs": 3, "finetune_lr": 1e-4}
# The instance `ferlab demo` runs in and `ferlab dev` serves (one DAGSTER_HOME, so the UI lists the
# demo's runs and the automation sees the demo's models). Pools: the training assets share the
# `training` pool, one slot, so one training runs at a time. Run retries: runs tagged
# `dagster/max_retries` (the ingest jobs) are retried when their worker crashes; failures of an
# asset itself are left to its RetryPolicy, as Dagster's docs advise. Python logs: the library
# packages' loggers (training epochs, tuning trials, ...) land in the run's log at INFO.
_DAGSTER_YAML_BEFORE_LOGS = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_retries:
  enabled: true
  retry_on_asset_or_op_failure: false
"""
DAGSTER_YAML = (
    _DAGSTER_YAML_BEFORE_LOGS
    + """\
python_logs:
  managed_python_loggers: [assets, labeling, models, warehouse]
  python_log_level: INFO
"""
)
# What earlier versions wrote: replaced, since it is ours; a dagster.yaml a user wrote is kept.
OLD_DAGSTER_YAMLS = ("telemetry:\n  enabled: false\n", _DAGSTER_YAML_BEFORE_LOGS)
# With $FERLAB_DAGSTER_POSTGRES_URL set: the same, runs and events in PostgreSQL (ferlab.runstorage).
DAGSTER_YAML_POSTGRES = DAGSTER_YAML + POSTGRES_STORAGE_YAML


def prepare_dagster_home(home: Path) -> Path:
    """DAGSTER_HOME: the environment's, else <data root>/dagster, with ferlab's dagster.yaml
    (telemetry off, one training at a time, run retries, the library's logs in the run log) unless one of the user's is there.
    Runs, events and schedules go to SQLite files there, or to PostgreSQL when
    `$FERLAB_DAGSTER_POSTGRES_URL` is set (checked first; the file names the variable, never the URL).
    FiftyOne's database and Ultralytics' settings also default to folders of the data root, so
    nothing is written under $HOME.

    Args:
        home: the data root.

    Returns the DAGSTER_HOME folder, also set in the environment.
    Raises OSError when the folder or its dagster.yaml cannot be written, ConfigError when the
    PostgreSQL server of `$FERLAB_DAGSTER_POSTGRES_URL` does not answer."""
    # The root's own FiftyOne database, served by its own mongod (labeling.fiftyone.sync); a
    # FIFTYONE_DATABASE_DIR of another data root is refused there, not silently shared.
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str((home / "fiftyone").resolve()))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the packaged mongod is 6.0
    os.environ.setdefault("YOLO_CONFIG_DIR", str((home / "ultralytics").resolve()))
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    url = postgres_url()
    wanted = DAGSTER_YAML_POSTGRES if url else DAGSTER_YAML
    if not config.exists() or config.read_text() in (*OLD_DAGSTER_YAMLS, DAGSTER_YAML, DAGSTER_YAML_POSTGRES):
        if url:
            check_postgres(url, dagster_home)
        if not config.exists() or config.read_text() != wanted:
            from warehouse.atomic import atomic_write_bytes

            atomic_write_bytes(
                config, wanted.encode()
            )  # a process opening the instance sees one or the other
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def write_sample_sources(sources: Path, seed: int = 0) -> None:
    """Quick samples of each source kind in the real formats, with broken input (tests)."""
    from ferlab.samples.disfa import write_disfa_sample
    from ferlab.samples.fer2013 import write_fer2013_sample
    from ferlab.samples.scraped import write_scraped_sample

    if not (sources / "fer2013.csv").exists():
        write_fer2013_sample(sources / "fer2013.csv", rows=200, seed=seed, broken=True)
    if not (sources / "disfa").exists():
        write_disfa_sample(sources / "disfa", subjects=("SN001", "SN002"), frames=60, seed=seed)
    if not (sources / "scraped").exists():
        write_scraped_sample(sources / "scraped", batch="batch-001", seed=seed)


def run_demo(home: Path, seed: int = 0, size: str = "small", train: bool = True) -> int:
    """Demo data into <home>/sources (unless sources are already there), then every job: ingest
    and auto-label each source, sync FiftyOne, and (with `train`) snapshot a dataset version and
    train + evaluate the AU and emotion models on it."""
    from dagster import DagsterInstance

    from dagster_project.definitions import defs
    from warehouse import Warehouse
    from warehouse.sources.disfa import find_disfa_subjects
    from warehouse.sources.scraped import find_scraped_batches

    home = home.resolve()
    os.environ["FERLAB_HOME"] = str(home)
    sources = home / "sources"
    started = time.perf_counter()
    if not sources.exists():
        from ferlab.demodata import generate_demo_data

        print(f"rendering demo data ({size}, seed {seed}) into {sources} ...")
        generate_demo_data(sources, seed=seed, size=size)
    print(f"sources in {sources} (ground truth and contact sheet in {sources / 'truth'})")
    prepare_dagster_home(home)
    instance = DagsterInstance.get()
    runs: list[tuple[str, str | None]] = [("fer2013_ingest_job", None)]
    for name, keys in (
        ("disfa_subjects", find_disfa_subjects(sources / "disfa")),
        ("scraped_batches", find_scraped_batches(sources / "scraped")),
    ):
        instance.add_dynamic_partitions(name, keys)
        job = "disfa_ingest_job" if name == "disfa_subjects" else "scraped_ingest_job"
        runs += [(job, key) for key in keys]
    runs.append(("review_job", None))

    def run(job_name: str, key: str | None = None, config: dict | None = None) -> bool:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            partition_key=key,
            raise_on_error=False,
            run_config={**QUIET, "ops": config or {}},
        )
        checks = result.get_asset_check_evaluations()
        passed = sum(c.passed for c in checks)
        ok = result.success and passed == len(checks)
        print(
            f"{'ok' if ok else 'FAILED':6} {job_name}{f' [{key}]' if key else ''}: checks {passed}/{len(checks)} passed"
        )
        return ok

    failed = sum(not run(job_name, key) for job_name, key in runs)
    if train:
        failed += _train_demo_models(home, instance, run)
        failed += _curate_demo(home, run)
        failed += _analyze_demo(home, run)
    wh = Warehouse(home)
    counts = wh.sql("SELECT source, count(*) AS images FROM images GROUP BY 1 ORDER BY 1").to_pylist()
    print("images:", ", ".join(f"{r['source']} {r['images']}" for r in counts))
    print(
        "labels:",
        f"emotion {wh.count('emotion_labels')}, AU {wh.count('au_labels')}, rejects {wh.count('rejects')}",
    )
    print(f"auto-labeling: {wh.count('detections')} detections, {wh.count('crops')} face crops")
    print(f"demo done in {time.perf_counter() - started:.1f} s; data root {home}")
    print(f'query it: .venv/bin/ferlab --home {home} sql "SELECT reason, count(*) FROM rejects GROUP BY 1"')
    print("browse it: make dev  (Dagster UI on http://127.0.0.1:3000)")
    return 1 if failed else 0


def demo_training() -> dict:
    """The training_job op config of the demo's budget, validated by the settings first (a
    ConfigError names a setting that does not exist or is out of range)."""
    from models.settings import AUTrainingSettings, EmotionTrainingSettings

    return {
        "au_model": {"config": AUTrainingSettings(**DEMO_AU).model_dump(exclude_defaults=True)},
        "emotion_model": {
            "config": EmotionTrainingSettings(**DEMO_EMOTION).model_dump(exclude_defaults=True)
        },
    }


def _train_demo_models(home: Path, instance, run) -> int:
    """dataset_version_job, then training_job on the new version; prints the headline figures."""
    from dagster import AssetKey

    from warehouse import Warehouse

    print("training the AU and emotion models on a dataset version (a few minutes on a CPU) ...")
    if not run("dataset_version_job"):
        return 1
    snapshot = instance.get_latest_materialization_event(AssetKey("dataset_version"))
    version = snapshot.asset_materialization.metadata["version"].value
    failed = int(not run("training_job", version, demo_training()))
    rows = (
        Warehouse(home)
        .sql(
            "SELECT task, model_id, headline_metric, round(headline_value, 3) AS value, report FROM model_runs "
            "WHERE dataset_version = ? ORDER BY created_at",
            [version],
        )
        .to_pylist()
    )
    for r in rows:
        print(f"  {r['task']:8} {r['headline_metric']} {r['value']}  report: {home / r['report']}")
    from models.tasks import AUTask, get_task

    au_models = [r["model_id"] for r in rows if isinstance(get_task(r["task"]), AUTask)]
    if au_models:
        _print_per_au(Warehouse(home), au_models[-1])
    return failed


def _analyze_demo(home: Path, run) -> int:
    """The production models on the whole video of a DISFA subject the AU model never saw, frame
    by frame against its gold AU labels (the `disfa_analysis` asset, as `ferlab analyze` runs them)."""
    import pyarrow.parquet as pq

    from labeling.analysis.gold import FRAMES_FILE, REPORT_DIR, analysis_dir, held_out_subjects
    from labeling.curation.pseudo import resolve_model
    from warehouse import Warehouse

    wh = Warehouse(home)
    try:
        subjects = held_out_subjects(wh, resolve_model(wh, "au", None))
    except LookupError as exc:
        print(f"video analysis skipped: {exc}")
        return 1
    if not subjects:
        print("video analysis skipped: the production AU model saw every DISFA subject")
        return 0
    subject = subjects[0]
    print(f"video analysis of DISFA {subject} (detector -> tracker -> AU + emotion models) ...")
    if not run("disfa_analysis_job", subject):
        return 1
    out = analysis_dir(wh, subject)
    summary = json.loads(pq.read_schema(out / FRAMES_FILE).metadata[b"ferlab.analysis_gold"])
    print(
        f"  {summary['frames']} frames, {summary['frames_with_face']} with a face, Avg.F1 vs gold "
        f"{summary['avg_f1']} (held out by the AU model); report {out / REPORT_DIR / 'report.md'}"
    )
    print(
        f"  any video: .venv/bin/ferlab --home {home} analyze VIDEO --out rows.parquet --video annotated.mp4"
    )
    return 0


def _curate_demo(home: Path, run) -> int:
    """One turn of the curation loop after training (which promoted or kept each model): pseudo
    labels by the production models, the review queue, and the queue to Label Studio when its
    server answers (else how to start it)."""
    from labeling.labelstudio.sync import LabelStudioClient, LabelStudioSettings
    from warehouse import Warehouse
    from warehouse.errors import FerlabError

    wh = Warehouse(home)
    for r in wh.sql(
        "SELECT task, model_id, promoted, metric, round(value, 3) AS value, production_model_id, "
        "round(production_value, 3) AS production_value FROM model_promotions ORDER BY decided_at"
    ).to_pylist():
        against = (
            f"production {r['production_model_id']} {r['production_value']}"
            if r["production_model_id"]
            else "no production model yet"
        )
        print(
            f"  {r['task']:8} {'promoted' if r['promoted'] else 'kept':8} {r['model_id']} {r['metric']} {r['value']} ({against})"
        )
    print("pseudo-labeling with the production models, then the review queue ...")
    failed = int(not run("curation_job"))
    for r in wh.sql(
        "SELECT 'au' AS task, count(*) AS n FROM au_labels WHERE label_source = 'pseudo' UNION ALL "
        "SELECT 'emotion', count(*) FROM emotion_labels WHERE label_source = 'pseudo' UNION ALL "
        "SELECT 'queued faces', count(DISTINCT crop_id) FROM review_queue"
    ).to_pylist():
        print(f"  {r['task']:13} {r['n']}" + (" pseudo labels" if r["task"] != "queued faces" else ""))
    settings = LabelStudioSettings.from_env()
    try:
        settings.require_key()
        LabelStudioClient(settings).check()
    except FerlabError as exc:
        print(f"Label Studio push skipped: {exc}")
        print(
            "  to review in Label Studio: export LABEL_STUDIO_API_KEY=<token>; make labelstudio; then `ferlab labelstudio push`"
        )
        return failed
    return failed + int(not run("label_studio_push_job"))


def _print_per_au(wh, model_id: str) -> None:
    """The AU model's F1 per AU beside calling the AU present on every face (held-out people)."""
    from models.evaluation import per_au_lines

    rows = wh.sql(
        "SELECT fold, metric, label, value FROM eval_metrics WHERE model_id = ? AND fold IS NULL",
        [model_id],
    ).to_pylist()
    for line in per_au_lines(rows):
        print("  " + line)
