"""Dynamic partitions, added by the sensors as new subjects and drop batches appear."""

from dagster import DynamicPartitionsDefinition

disfa_subjects = DynamicPartitionsDefinition(name="disfa_subjects")
scraped_batches = DynamicPartitionsDefinition(name="scraped_batches")
