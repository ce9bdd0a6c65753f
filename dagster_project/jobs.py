"""Jobs, for launching by hand (the UI, `ferlab demo`, tests); automation needs none of them.
One ingest job per source kind (their partitions differ, so they cannot share a run), each
ingesting its source and auto-labeling what it ingested; the FiftyOne sync; the student
detector; dataset versions; per dataset version, training + evaluation, the loss comparison and the
hyper-parameter searches; per DISFA subject, the analysis of its video against its gold labels."""

from dagster import AssetSelection, define_asset_job

from dagster_project.executors import ferlab_executor

# A crashed run worker is retried as a run, at most twice (`run_retries` in dagster.yaml turns
# this on; ingestion is idempotent, so a retry adds only what the crashed run had not).
INGEST_RUN_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}


def _ingest_job(source: str, images: str, description: str):
    """The source's images asset and the detections + crops made from them. With
    `$FERLAB_DASK_SCHEDULER` set, their steps run on the dask cluster's workers (executors.py)."""
    return define_asset_job(
        f"{source}_ingest_job",
        selection=AssetSelection.assets(images, f"{source}_detections", f"{source}_crops"),
        tags=INGEST_RUN_TAGS,
        description=description,
        executor_def=ferlab_executor,
    )


fer2013_ingest_job = _ingest_job(
    "fer2013", "fer2013_images", "Ingest the FER-2013 CSV; its images are face crops already."
)
disfa_ingest_job = _ingest_job(
    "disfa", "disfa_frames", "Ingest one DISFA subject (video frames + AU labels), detect and crop its faces."
)
scraped_ingest_job = _ingest_job(
    "scraped", "scraped_images", "Ingest one batch of scraped images, detect and crop its faces."
)
review_job = define_asset_job(
    "review_job", selection=AssetSelection.groups("review"), description="Sync the FiftyOne dataset."
)
face_detector_job = define_asset_job(
    "face_detector_job",
    selection=AssetSelection.assets("face_detector"),
    description="Train the YOLO student on the teachers' labels of the ingested images and install it "
    "as the default detector.",
)
dataset_version_job = define_asset_job(
    "dataset_version_job",
    selection=AssetSelection.assets("dataset_version"),
    description="Snapshot the usable crops + labels + splits as a dataset version (a new partition).",
)
# The models and what follows them on the version (their evaluation reports, then the promotion
# decisions); the curation assets are not partitioned, so they run in a job of their own.
MODELS = AssetSelection.assets("au_model", "emotion_model")
# The compact models follow a model too, but a student is a training of its own: launched by hand.
COMPACT = AssetSelection.assets("au_compact", "emotion_compact")
training_job = define_asset_job(
    "training_job",
    selection=(MODELS | MODELS.downstream(depth=2)) - COMPACT,
    description="Train and evaluate the AU and emotion models on one dataset version, and promote each "
    "if it beats the production model.",
)
curation_job = define_asset_job(
    "curation_job",
    selection=AssetSelection.groups("curation"),
    description="Pseudo-label with the production models, then build the review queue.",
)
label_studio_push_job = define_asset_job(
    "label_studio_push_job",
    selection=AssetSelection.assets("label_studio_tasks"),
    description="Push the review queue's faces to Label Studio (its server must be up: `make labelstudio`).",
)
loss_comparison_job = define_asset_job(
    "loss_comparison_job",
    selection=AssetSelection.assets("au_loss_comparison"),
    description="Seed 000's experiment: BCE, LSEP and precision-recall loss on the same folds.",
)
pseudo_label_experiment_job = define_asset_job(
    "pseudo_label_experiment_job",
    selection=AssetSelection.assets("au_pseudo_label_experiment"),
    description="Does pseudo-labeling help? The AU model on gold vs gold + pseudo labels, same folds.",
)
semi_supervised_job = define_asset_job(
    "semi_supervised_job",
    selection=AssetSelection.assets("au_semi_supervised_experiment"),
    description="Fewer human labels for the same AU model? Labeled gold vs + pseudo labels vs all gold, "
    "per label budget and split.",
)
active_learning_job = define_asset_job(
    "active_learning_job",
    selection=AssetSelection.assets("au_active_learning_simulation"),
    description="Does the review queue spend a curator's labels well? Active learning, simulated.",
)
au_tuning_job = define_asset_job(
    "au_tuning_job",
    selection=AssetSelection.assets("au_tuning"),
    description="Seed 004's Bayesian hyper-parameter search of the AU model (Optuna TPE, 10 trials).",
)
emotion_tuning_job = define_asset_job(
    "emotion_tuning_job",
    selection=AssetSelection.assets("emotion_tuning"),
    description="Seed 004's Bayesian hyper-parameter search of the emotion model (Optuna TPE, 10 trials).",
)
compact_job = define_asset_job(
    "compact_job",
    selection=COMPACT,
    description="Seed 004's compact models of the latest AU and emotion models: int8 ONNX, the distilled "
    "alpha-0.25 student, and their size / latency / metric table.",
)
disfa_analysis_job = define_asset_job(
    "disfa_analysis_job",
    selection=AssetSelection.assets("disfa_analysis"),
    description="Analyze one DISFA subject's video with the production detector and models and score it "
    "frame by frame against its gold AU labels (report under <home>/analysis/disfa/<subject>/).",
)

jobs = [
    fer2013_ingest_job,
    disfa_ingest_job,
    scraped_ingest_job,
    review_job,
    face_detector_job,
    dataset_version_job,
    training_job,
    curation_job,
    label_studio_push_job,
    loss_comparison_job,
    pseudo_label_experiment_job,
    semi_supervised_job,
    active_learning_job,
    au_tuning_job,
    emotion_tuning_job,
    compact_job,
    disfa_analysis_job,
]
