"""Which label of an image wins, defined once for every reader (dataset versions, FiftyOne).

Only the production model's pseudo labels count (`counts_sql`): a task's production model is
the newest one promoted in `model_promotions`. The strongest label source wins: human > gold > pseudo > weak (LABEL_SOURCES order); a source
not in that list ranks below all of them (it is never NULL, whose place in an ORDER BY depends
on the engine). Among labels of one source: the most confident (emotions) or probable (AUs)
first, then the annotator's name, then the value itself, so the pick never depends on the
order rows were stored in. Human labels have no confidence: among them the annotator's name
decides (a consensus row's confidence is a share of annotators, not a model's certainty).

Several curators on one face (Label Studio's overlap, labeling.labelstudio.agreement): each
answer is a human label of its own annotator (PANEL_PREFIX + user id), and the pull writes the
panel's outcome as one more human label, annotator CONSENSUS_ANNOTATOR: the value most of them
gave, its confidence (AUs: probability) the share of annotators who gave it, its threshold the
share the consensus rule needs. `counts_sql` makes every reader take that outcome: a face's
panel answers no longer count once it has a consensus row (of that table), and the consensus
row counts only when its share reaches its threshold. A face without consensus thus gets no
human label from the panel (a gold, pseudo or weak label, or another curator's, stands), while
every answer stays in the label tables.
"""

from __future__ import annotations

from warehouse.schemas import LABEL_SOURCES
from warehouse.store import quote_literal

PANEL_PREFIX = "labelstudio:"  # the annotators of a tool that may give one face to several curators
CONSENSUS_ANNOTATOR = PANEL_PREFIX + "consensus"  # the panel's outcome on a face (module docstring)
# per task: its label table and the column holding a consensus row's share of annotators
PANEL_SHARE = {"emotion": ("emotion_labels", "confidence"), "au": ("au_labels", "probability")}


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
    return (
        f"{source_rank_sql(a + 'label_source')}, {_unless_human(a, 'confidence')} DESC NULLS LAST, "
        f"{a}annotator, {a}emotion"
    )


def au_order_sql(alias: str = "") -> str:
    """ORDER BY terms over au_labels rows (columns prefixed by `alias`): the first row of a
    (face, AU) is its AU label."""
    a = alias
    return (
        f"{source_rank_sql(a + 'label_source')}, {_unless_human(a, 'probability')} DESC NULLS LAST, "
        f"{a}annotator, {a}present"
    )


def _unless_human(alias: str, column: str) -> str:
    """The row's confidence / probability, NULL for a human label (module docstring)."""
    return f"CASE WHEN {alias}label_source = 'human' THEN NULL ELSE {alias}{column} END"


def production_models_sql() -> str:
    """SQL for (task, model_id): each task's production model, the newest promoted one in
    model_promotions (one row per task that has one)."""
    return (
        "SELECT task, model_id FROM model_promotions WHERE promoted "
        "QUALIFY row_number() OVER (PARTITION BY task ORDER BY decided_at DESC, model_id) = 1"
    )


def counts_sql(task: str, alias: str = "") -> str:
    """SQL condition over label rows (columns prefixed by `alias`) of `task` ("au", "emotion"):
    true unless the row is a pseudo label of a model that is not the task's production model, or a
    panel row that does not count (`panel_counts_sql`)."""
    a = alias
    return (
        f"({a}label_source <> 'pseudo' OR {a}annotator IN (SELECT model_id FROM "
        f"({production_models_sql()}) WHERE task = {quote_literal(task)})) AND {panel_counts_sql(task, a)}"
    )


def verified_sql(alias: str = "") -> str:
    """SQL condition over label rows: false for a pseudo label marked unverified (its cut's
    precision measured on another source's faces: labeling.curation.pseudo.source_cuts), which
    curators see but dataset versions leave out; rows from before the flag (null) count."""
    return f"({alias}label_source <> 'pseudo' OR {alias}verified IS NOT FALSE)"


def panel_counts_sql(task: str, alias: str = "") -> str:
    """SQL condition over label rows of `task` ("au", "emotion"; columns prefixed by `alias`): false
    for a panel answer of a face that has a consensus row in the table, and for a consensus row
    whose share of annotators is under the rule's (module docstring); true for any other row."""
    a = alias
    table, share = PANEL_SHARE[task]
    panel, consensus = quote_literal(PANEL_PREFIX), quote_literal(CONSENSUS_ANNOTATOR)
    return (
        f"({a}label_source <> 'human' OR NOT starts_with({a}annotator, {panel}) OR CASE "
        f"WHEN {a}annotator = {consensus} THEN coalesce({a}{share} >= {a}threshold, false) "
        f"ELSE coalesce({a}crop_id NOT IN (SELECT _c.crop_id FROM {table} _c WHERE _c.label_source = 'human' "
        f"AND _c.annotator = {consensus} AND _c.crop_id IS NOT NULL), true) END)"
    )
