"""Which label of an image wins, defined once for every reader (dataset versions, FiftyOne).

Only the production model's pseudo labels count (`counts_sql`): a task's production model is
the newest one promoted in `model_promotions`. The strongest label source wins: human > gold > pseudo > weak (LABEL_SOURCES order); a source
not in that list ranks below all of them (it is never NULL, whose place in an ORDER BY depends
on the engine). Among labels of one source: the most confident (emotions) or probable (AUs)
first, then the annotator's name, then the value itself, so the pick never depends on the
order rows were stored in.
"""

from __future__ import annotations

from warehouse.schemas import LABEL_SOURCES
from warehouse.store import quote_literal


def source_rank_sql(column: str = "label_source") -> str:
    """SQL for the rank of a label source: 0 for human ... 3 for weak, 4 for any other value."""
    whens = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(LABEL_SOURCES))
    return f"CASE {column} {whens} ELSE {len(LABEL_SOURCES)} END"


def rank_source_sql(column: str) -> str:
    """SQL for the label source of a rank (the inverse of source_rank_sql); NULL for none."""
    whens = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(LABEL_SOURCES))
    return f"CASE {column} {whens} END"


def emotion_order_sql(alias: str = "") -> str:
    """ORDER BY terms over emotion_labels rows (columns prefixed by `alias`, e.g. "e."): the
    first row of a face is its emotion label."""
    a = alias
    return f"{source_rank_sql(a + 'label_source')}, {a}confidence DESC NULLS LAST, {a}annotator, {a}emotion"


def au_order_sql(alias: str = "") -> str:
    """ORDER BY terms over au_labels rows (columns prefixed by `alias`): the first row of a
    (face, AU) is its AU label."""
    a = alias
    return f"{source_rank_sql(a + 'label_source')}, {a}probability DESC NULLS LAST, {a}annotator, {a}present"


def production_models_sql() -> str:
    """SQL for (task, model_id): each task's production model, the newest promoted one in
    model_promotions (one row per task that has one)."""
    return (
        "SELECT task, model_id FROM model_promotions WHERE promoted "
        "QUALIFY row_number() OVER (PARTITION BY task ORDER BY decided_at DESC, model_id) = 1"
    )


def counts_sql(task: str, alias: str = "") -> str:
    """SQL condition over label rows (columns prefixed by `alias`) of `task` ("au", "emotion"):
    true unless the row is a pseudo label of a model that is not the task's production model."""
    a = alias
    return (
        f"({a}label_source <> 'pseudo' OR {a}annotator IN (SELECT model_id FROM "
        f"({production_models_sql()}) WHERE task = {quote_literal(task)}))"
    )
