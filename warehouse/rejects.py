"""Bad input is recorded, never silently dropped: one `rejects` row per problem, with where
it was and why. The row's id hashes everything but the time it was seen, so re-running the
same input does not add the same reject twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from warehouse.hashing import stable_id
from warehouse.schemas import REJECTS


@dataclass(frozen=True)
class Reject:
    source: str  # disfa | fer2013 | scraped | ...
    source_uri: str  # the file (and place in it) that was bad
    stage: str  # the step that found it: parse, decode, labels, ...
    reason: str  # a short stable code, e.g. wrong_pixel_count
    detail: str = ""  # what a person needs to find and fix it
    line: int | None = None  # 1-based line in a text file, frame in a video

    @property
    def reject_id(self) -> str:
        return stable_id(self.source, self.source_uri, self.stage, self.reason, self.detail, self.line)


def rejects_table(rejects: Iterable[Reject]) -> pa.Table:
    rows = list(rejects)
    now = dt.datetime.now(dt.UTC)
    return pa.table(
        {
            "reject_id": [r.reject_id for r in rows],
            "source": [r.source for r in rows],
            "source_uri": [r.source_uri for r in rows],
            "stage": [r.stage for r in rows],
            "reason": [r.reason for r in rows],
            "detail": [r.detail for r in rows],
            "line": [r.line for r in rows],
            "seen_at": [now] * len(rows),
        },
        schema=REJECTS,
    )
