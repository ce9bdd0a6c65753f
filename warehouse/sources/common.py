"""What every source ingestion shares: its report, progress bars, image encoding."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from warehouse.rejects import Reject
from warehouse.store import LabelWrite


@dataclass
class IngestReport:
    """What one ingestion run found and stored.

    `added` counts the rows newly stored per table (0 everywhere on a re-run); `images_found`
    counts the good images in the input whether or not they were already stored."""

    source: str
    images_found: int = 0
    added: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)  # labels whose value changed at the source
    rejects: list[Reject] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    def add(self, table: str, n: int) -> None:
        self.added[table] = self.added.get(table, 0) + n

    def count_labels(self, table: str, written: LabelWrite) -> None:
        """Count what a write to a label table did: new labels and corrected ones."""
        self.add(table, written.added)
        self.updated[table] = self.updated.get(table, 0) + written.updated

    def summary(self) -> str:
        added = ", ".join(f"{k} +{v}" for k, v in sorted(self.added.items())) or "nothing new"
        updated = sum(self.updated.values())
        labels = f"; labels updated: {updated}" if updated else ""
        return (
            f"{self.source}: {self.images_found} images found; {added}{labels}; {len(self.rejects)} rejects"
        )


def progress(
    items: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
) -> tqdm:
    """A progress bar on stderr for long work: iterate it, or call .update(n) on it; silent when
    disabled (tests, Dagster runs, which log instead)."""
    return tqdm(items, total=total, desc=desc, disable=not enabled, leave=False, unit=unit)
