"""Jobs: one per ingestion asset (their partitions differ, so they cannot share a run; each
job takes its asset's partitions)."""

from dagster import AssetSelection, define_asset_job

from assets.ingest import disfa_frames, fer2013_images, scraped_images

fer2013_ingest_job = define_asset_job(
    "fer2013_ingest_job",
    selection=AssetSelection.assets(fer2013_images),
    description="Ingest the FER-2013 CSV.",
)
disfa_ingest_job = define_asset_job(
    "disfa_ingest_job",
    selection=AssetSelection.assets(disfa_frames),
    description="Ingest one DISFA subject (video frames + AU labels).",
)
scraped_ingest_job = define_asset_job(
    "scraped_ingest_job",
    selection=AssetSelection.assets(scraped_images),
    description="Ingest one batch of scraped images.",
)

ingest_jobs = [fer2013_ingest_job, disfa_ingest_job, scraped_ingest_job]
