"""Dynamic partitions: subjects and drop batches (added by the sensors as they appear) and
dataset versions (added by the dataset_version asset)."""

from dagster import DynamicPartitionsDefinition

disfa_subjects = DynamicPartitionsDefinition(name="disfa_subjects")
scraped_batches = DynamicPartitionsDefinition(name="scraped_batches")
dataset_versions = DynamicPartitionsDefinition(name="dataset_versions")  # added by the dataset_version asset
