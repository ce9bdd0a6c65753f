"""Jobs: one per source kind (their partitions differ, so they cannot share a run). Each job
ingests its source and auto-labels what it ingested: detections and face crops."""

from dagster import AssetSelection, define_asset_job

from assets.autolabel import disfa_faces, fer2013_faces, fiftyone_dataset, scraped_faces
from assets.ingest import disfa_frames, fer2013_images, scraped_images

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
