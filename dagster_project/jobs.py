"""Jobs: one per source kind (their partitions differ, so they cannot share a run), each ingesting
its source and auto-labeling what it ingested; the student detector; dataset versions; and,
per dataset version, training + evaluation and the loss comparison."""

from dagster import AssetSelection, define_asset_job

from assets.autolabel import disfa_faces, fer2013_faces, fiftyone_dataset, scraped_faces
from assets.face_detector import face_detector
from assets.ingest import disfa_frames, fer2013_images, scraped_images
from assets.models import (
    au_eval_report,
    au_loss_comparison,
    au_model,
    dataset_version,
    emotion_eval_report,
    emotion_model,
)

fer2013_ingest_job = define_asset_job(
    "fer2013_ingest_job",
    selection=AssetSelection.assets(fer2013_images, fer2013_faces),
    description="Ingest the FER-2013 CSV; its images are face crops already.",
)
disfa_ingest_job = define_asset_job(
    "disfa_ingest_job",
    selection=AssetSelection.assets(disfa_frames, disfa_faces),
    description="Ingest one DISFA subject (video frames + AU labels), detect and crop its faces.",
)
scraped_ingest_job = define_asset_job(
    "scraped_ingest_job",
    selection=AssetSelection.assets(scraped_images, scraped_faces),
    description="Ingest one batch of scraped images, detect and crop its faces.",
)

ingest_jobs = [fer2013_ingest_job, disfa_ingest_job, scraped_ingest_job]
review_job = define_asset_job(
    "review_job", selection=AssetSelection.assets(fiftyone_dataset), description="Sync the FiftyOne dataset."
)
face_detector_job = define_asset_job(
    "face_detector_job",
    selection=AssetSelection.assets(face_detector),
    description="Train the YOLO student on the teachers' labels of the ingested images and install it "
    "as the default detector.",
)

dataset_version_job = define_asset_job(
    "dataset_version_job",
    selection=AssetSelection.assets(dataset_version),
    description="Snapshot the usable crops + labels + splits as a dataset version (a new partition).",
)
training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.assets(au_model, au_eval_report, emotion_model, emotion_eval_report),
    description="Train and evaluate the AU and emotion models on one dataset version.",
)
loss_comparison_job = define_asset_job(
    "loss_comparison_job",
    selection=AssetSelection.assets(au_loss_comparison),
    description="Seed 000's experiment: BCE, LSEP and precision-recall loss on the same folds.",
)
model_jobs = [dataset_version_job, training_job, loss_comparison_job]
