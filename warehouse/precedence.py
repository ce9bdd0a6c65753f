"""Which label of an image wins, defined once for every reader (dataset versions, FiftyOne).

The strongest label source wins: human > gold > pseudo > weak (LABEL_SOURCES order); a source
not in that list ranks below all of them (it is never NULL, whose place in an ORDER BY depends
on the engine). Among labels of one source: the most confident (emotions) or probable (AUs)
first, then the annotator's name, then the value itself, so the pick never depends on the
order rows were stored in.
"""

from __future__ import annotations

from warehouse.schemas import LABEL_SOURCES


def source_rank_sql(column: str = "label_source") -> str:
    """SQL for the rank of a label source: 0 for human ... 3 for weak, 4 for any other value."""
    whens = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(LABEL_SOURCES))
    return f"CASE {column} {whens} ELSE {len(LABEL_SOURCES)} END"


def rank_source_sql(column: str) -> str:
    """SQL for the label source of a rank (the inverse of source_rank_sql); NULL for none."""
    whens = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(LABEL_SOURCES))
    return f"CASE {column} {whens} END"


def emotion_order_sql() -> str:
    """ORDER BY terms over emotion_labels rows: the first row of an image is its emotion label."""
    return f"{source_rank_sql()}, confidence DESC NULLS LAST, annotator, emotion"


def au_order_sql() -> str:
    """ORDER BY terms over au_labels rows: the first row of an (image, AU) is its AU label."""
    return f"{source_rank_sql()}, probability DESC NULLS LAST, annotator, present"
