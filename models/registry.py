"""The model registry: per task one `production` model, replaced only by a model that beats it on
the same held-out evaluation. Every decision is a `model_promotions` row with both figures.

    decision = decide_promotion(wh, model_id)   # after evaluate_model; writes one row, once
    production_model(wh, "au")                  # the newest promoted model, or None

The same held-out evaluation: the candidate's dataset version, scored by the candidate's protocol
(its folds, or the version's test split) over the same labels. When the production model was
evaluated so on that version, its stored headline is compared. Otherwise the production model's
settings are trained and evaluated on the candidate's version (folds are deterministic from the
groups, so the held-out faces are the same) and that figure is compared. No production model
yet: the candidate is promoted. A tie does not promote: retraining never replaces a model with
one that is not better. Deciding the same model again adds nothing and returns the first decision.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from models.pipeline import evaluate_model, load_run, train_model
from models.settings import TrainingSettings
from models.tasks import get_task
from warehouse import Warehouse
from warehouse.precedence import production_models_sql
from warehouse.store import quote_literal


@dataclass(frozen=True)
class PromotionDecision:
    """One model_promotions row (see warehouse.schemas), and whether this call wrote it."""

    task: str
    model_id: str
    promoted: bool
    metric: str
    value: float | None
    production_model_id: str | None
    production_value: float | None
    dataset_version: str
    reason: str
    decided_at: dt.datetime
    recorded: bool = True  # False: decided before, nothing written now

    def summary(self) -> str:
        verdict = "promoted" if self.promoted else "not promoted"
        theirs = (
            f" vs production {self.production_model_id} {self.production_value:.4f}"
            if self.production_value is not None
            else ""
        )
        ours = f"{self.value:.4f}" if self.value is not None else "n/a"
        return f"{self.model_id}: {verdict} ({self.metric} {ours}{theirs}): {self.reason}"

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _COLUMNS}


_COLUMNS = (
    "task",
    "model_id",
    "promoted",
    "metric",
    "value",
    "production_model_id",
    "production_value",
    "dataset_version",
    "reason",
    "decided_at",
)

# Trains + evaluates `settings` on `version`; returns (model_id, headline). Replaceable in tests.
Retrain = Callable[[Warehouse, str, TrainingSettings, str], tuple[str, float]]

log = logging.getLogger(__name__)


def production_model(wh: Warehouse, task: str) -> str | None:
    """The task's production model (the newest promoted one), or None before any promotion."""
    rows = wh.sql(f"SELECT model_id FROM ({production_models_sql()}) WHERE task = {quote_literal(task)}")
    return rows.column("model_id")[0].as_py() if rows.num_rows else None


def decisions(wh: Warehouse, task: str | None = None) -> pa.Table:
    """Every promotion decision (of one task), oldest first."""
    where = f"WHERE task = {quote_literal(task)}" if task else ""
    return wh.sql(f"SELECT * FROM model_promotions {where} ORDER BY decided_at, model_id")


def _stored_decision(wh: Warehouse, task: str, model_id: str) -> PromotionDecision | None:
    rows = wh.sql(
        "SELECT * FROM model_promotions WHERE task = $t AND model_id = $m", params={"t": task, "m": model_id}
    ).to_pylist()
    return PromotionDecision(**{k: rows[0][k] for k in _COLUMNS}, recorded=False) if rows else None


def headline(
    wh: Warehouse, model_id: str, version: str | None = None, metric: str | None = None
) -> float | None:
    """The model's stored overall figure `metric` (default: its task's headline), on `version`
    when given."""
    task = get_task(model_id.split("-", 1)[0])
    params: dict[str, Any] = {"m": model_id, "metric": metric or task.headline}
    where = "model_id = $m AND metric = $metric AND fold IS NULL AND label = ''"
    if version is not None:
        where += " AND dataset_version = $v"
        params["v"] = version
    rows = wh.sql(f"SELECT value FROM eval_metrics WHERE {where}", params=params)
    return float(rows.column("value")[0].as_py()) if rows.num_rows else None


def _retrain(wh: Warehouse, version: str, settings: TrainingSettings, metric: str) -> tuple[str, float]:
    run = train_model(wh, version, settings)
    evaluate_model(wh, run.model_id)
    return run.model_id, headline(wh, run.model_id, version, metric) or 0.0


def _comparable(candidate: TrainingSettings, production: TrainingSettings) -> str | None:
    """Why the two cannot be scored on the same evaluation (None when they can)."""
    if candidate.task.labels != production.task.labels:
        return f"different labels ({candidate.task.labels} vs {production.task.labels})"
    return None


def decide_promotion(wh: Warehouse, model_id: str, retrain: Retrain = _retrain) -> PromotionDecision:
    """Promote `model_id` if it beats the task's production model on the same held-out
    evaluation (module docstring); record the decision in model_promotions either way.
    Evaluates the candidate first when it has no stored evaluation.

    Raises:
        FileNotFoundError: no trained model of that id.
    """
    run = load_run(wh, model_id)
    task = run.settings().task  # judged by the candidate's own headline (e.g. avg_f1_pooled)
    stored = _stored_decision(wh, task.name, model_id)
    if stored is not None:
        log.info(f"already decided: {stored.summary()}")
        return stored
    version = run.dataset_version
    value = headline(wh, model_id, version, task.headline)
    if value is None:
        evaluate_model(wh, model_id)
        value = headline(wh, model_id, version, task.headline)
    production = production_model(wh, task.name)
    theirs: float | None = None
    if production is None:
        promoted, reason = True, "no production model yet"
    else:
        cand_settings = run.settings()
        prod_run = load_run(wh, production)
        prod_settings = prod_run.settings()
        why_not = _comparable(cand_settings, prod_settings)
        same_protocol = prod_settings.folds == cand_settings.folds
        if why_not:
            promoted, reason = False, f"not comparable with production: {why_not}"
        elif prod_run.dataset_version == version and same_protocol:
            theirs = headline(wh, production, version, task.headline)
            if theirs is None:
                evaluate_model(wh, production)
                theirs = headline(wh, production, version, task.headline)
            how = "its stored evaluation"
        else:
            replay = prod_settings.replace(folds=cand_settings.folds)
            log.info(
                f"production {production} was evaluated on {prod_run.dataset_version} ({prod_settings.protocol}); "
                f"training its settings on {version} ({cand_settings.protocol}) for the same held-out faces"
            )
            replay_id, theirs = retrain(wh, version, replay, task.headline)
            how = f"its settings retrained on this version as {replay_id}"
        if theirs is not None:
            promoted = value > theirs
            verdict = "beats" if promoted else "does not beat"
            reason = f"{verdict} production on {version} ({cand_settings.protocol}; production: {how})"
    decision = PromotionDecision(
        task=task.name,
        model_id=model_id,
        promoted=bool(promoted),
        metric=task.headline,
        value=value,
        production_model_id=production,
        production_value=theirs,
        dataset_version=version,
        reason=reason,
        decided_at=dt.datetime.now(dt.UTC),
    )
    if not wh.append("model_promotions", pa.Table.from_pylist([decision.row()])):
        return _stored_decision(wh, task.name, model_id) or decision  # decided meanwhile elsewhere
    log.info(decision.summary())
    return decision


def list_models(wh: Warehouse, task: str | None = None) -> pa.Table:
    """Every evaluated model with its headline, whether it is production, and its decision."""
    where = f"WHERE r.task = {quote_literal(task)}" if task else ""
    return wh.sql(
        f"""
        SELECT r.task, r.model_id, r.dataset_version, r.headline_metric AS metric,
               round(r.headline_value, 4) AS value, (p.model_id IS NOT NULL) AS production,
               CASE WHEN d.promoted THEN 'promoted' WHEN d.promoted IS NULL THEN 'undecided'
                    ELSE 'not promoted' END AS decision,
               round(d.production_value, 4) AS production_value_then, d.production_model_id AS vs,
               d.reason, r.created_at
        FROM model_runs r
        LEFT JOIN ({production_models_sql()}) p ON p.model_id = r.model_id AND p.task = r.task
        LEFT JOIN model_promotions d ON d.model_id = r.model_id AND d.task = r.task
        {where}
        ORDER BY r.task, r.created_at, r.model_id
        """
    )
