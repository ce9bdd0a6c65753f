"""Train and evaluate models on a dataset version of a data root: what the Dagster assets and
`ferlab train` / `ferlab evaluate` both call.

    run = train_model(wh, version, AUTrainingSettings(loss="pr"))
    evaluation = evaluate_model(wh, run.model_id)     # report + eval_metrics + model_runs

Layout under the data root:
    models/<task>/<model_id>/model.pt, model.onnx   the production model (refit, or best fold)
                             fold-<i>.pt             every fold's model
                             predictions.npz         held-out predictions of every fold
                             run.json                settings, network, histories, validation, timings
    reports/<version>/<model_id>/report.md, report.html, *.png

AU models are scored by subject-exclusive k-fold cross-validation (seed 000's protocol);
emotion models by the version's train / val / test split (FER-2013's), or by k-fold too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from models import render
from models.checkpoint import export_onnx, load_checkpoint, onnx_predict, save_checkpoint
from models.data import load_faces, validation_split
from models.evaluation import overall
from models.networks import WithProbabilities, normalize
from models.predictions import FoldPredictions, load_predictions, save_predictions
from models.report import compare_losses_report, evaluate_folds, write_report
from models.settings import AUTrainingSettings, TrainingSettings, settings_from_dict
from models.tasks import Task
from models.train import FoldRun, cross_validate, fit, holdout
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes
from warehouse.hashing import stable_id
from warehouse.precedence import production_models_sql
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)


@dataclass
class ModelRun:
    model_id: str
    task: str
    dataset_version: str
    directory: Path
    checkpoint: Path
    onnx: Path
    folds: list[FoldPredictions]
    info: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> TrainingSettings:
        """The settings the model was trained with (from its run.json).

        Raises:
            ConfigError: the saved settings no longer validate.
        """
        return settings_from_dict(self.info["settings"])

    def held_out_groups(self) -> list[str] | None:
        """The groups the production model never saw, in training or validation: its fold's test
        groups. None for a model refit on every face."""
        fold = self.info.get("final", {}).get("from_fold")
        if fold is None:
            return None
        return next(f["test_groups"] for f in self.info["folds"] if f["fold"] == fold)


def model_id_for(version: str, settings: TrainingSettings) -> str:
    """Same version + same settings -> same id (a re-run replaces the model, never duplicates)."""
    digest = stable_id(version, json.dumps(settings.to_dict(), sort_keys=True))[:10]
    return f"{settings.kind}-{settings.architecture}-{settings.loss_name}-{digest}"


def model_dir(wh: Warehouse, task: str, model_id: str) -> Path:
    """The folder of a model's files under the data root."""
    return wh.home / "models" / task / model_id


def train_model(wh: Warehouse, version: str, settings: TrainingSettings) -> ModelRun:
    """Cross-validate (`settings.folds` > 0) or hold out (folds == 0: the version's split) on the
    version, then save the production model: refit on all the data when `settings.refit`, else the
    fold model with the lowest validation loss. Every fold's model and predictions are kept, and
    the settings beside them (run.json, every checkpoint).

    Raises:
        LookupError: no such dataset version.
        ValueError: the version has too few labelled crops or groups for the protocol.
        ConfigError: the settings' device is not on this machine (models.device).
    """
    task = settings.task
    mid = model_id_for(version, settings)
    out = model_dir(wh, task.name, mid)
    manifest = read_manifest(wh, version)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    network = settings.network()
    faces = load_faces(wh.home, manifest, task, network.image_size, network.channels)
    log.info(
        "%s: %d %s-labelled crops of %d groups, protocol %s",
        mid,
        len(faces),
        task.name,
        len(set(faces.groups)),
        settings.protocol,
    )
    runs: list[FoldRun] = cross_validate(faces, settings) if settings.folds > 0 else holdout(faces, settings)
    saved = {"settings": settings.to_dict()}
    for run in runs:
        save_checkpoint(
            out / f"fold-{run.predictions.fold}.pt", run.fit.model, network, {**saved, **_fit_info(run)}
        )
    if settings.refit:
        everything = np.arange(len(faces))
        train_idx, val_idx, how = validation_split(faces.groups, everything, seed=settings.seed)
        log.info("refit on every group: %d train, %d val (%s)", len(train_idx), len(val_idx), how)
        final = fit(faces, train_idx, val_idx, settings)
        final_info = {"refit": True, "validation": how, "history": final.history}
    else:
        best = min(runs, key=lambda r: r.fit.best_val_loss)
        final = best.fit
        final_info = {"refit": False, "from_fold": best.predictions.fold, **_fit_info(best)}
    checkpoint = save_checkpoint(out / "model.pt", final.model, network, {**saved, **final_info})
    onnx = export_onnx(final.model.cpu(), network, out / "model.onnx")
    preds = [r.predictions for r in runs]
    save_predictions(out / "predictions.npz", preds)
    info = {
        "model_id": mid,
        "task": task.name,
        "dataset_version": version,
        "protocol": settings.protocol,
        **saved,
        "network": network.to_dict(),
        "weights_source": getattr(final.model, "weights_source", "random init"),
        "n_faces": len(faces),
        "groups": sorted(set(faces.groups.tolist())),
        "folds": [_fit_info(r) for r in runs],
        "final": {k: v for k, v in final_info.items() if k != "history"},
        "train_images_per_s": float(np.mean([r.fit.train_images_per_s for r in runs])),
        "seconds": time.perf_counter() - started,
        "created_at": datetime.now(UTC).isoformat(),
    }
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=1).encode())
    atomic_write_bytes(_latest_path(wh, task.name, version), mid.encode())
    return ModelRun(mid, task.name, version, out, checkpoint, onnx, preds, info)


def _fit_info(run: FoldRun) -> dict[str, Any]:
    return {
        "fold": run.predictions.fold,
        "validation": run.fit.validation,
        "test_groups": run.predictions.groups,
        "best_val_loss": run.fit.best_val_loss,
        "epochs": len(run.fit.history),
        "seconds": run.fit.seconds,
        "history": run.fit.history,
    }


def _latest_path(wh: Warehouse, task: str, version: str) -> Path:
    return wh.home / "models" / task / "latest" / version


def latest_model_id(wh: Warehouse, task: str, version: str) -> str:
    """The model most recently trained for the task on the version (what evaluation reports on)."""
    path = _latest_path(wh, task, version)
    if not path.is_file():
        raise FileNotFoundError(f"no {task} model has been trained on dataset version {version} in {wh.home}")
    return path.read_text().strip()


def report_folder(run: ModelRun) -> PurePosixPath:
    """Where the model's evaluation report goes, relative to the data root."""
    return PurePosixPath("reports", run.dataset_version, run.model_id)


def load_run(wh: Warehouse, model_id: str) -> ModelRun:
    """A trained model's files and run.json (`ModelRun.settings()` gives its settings back).

    Raises:
        FileNotFoundError: no model of that id in the data root.
    """
    task = model_id.split("-", 1)[0]
    out = model_dir(wh, task, model_id)
    if not (out / "run.json").is_file():
        known = sorted(p.name for p in (wh.home / "models").glob("*/*") if (p / "run.json").is_file())
        raise FileNotFoundError(f"no trained model {model_id!r} in {wh.home}; known: {known}")
    info = json.loads((out / "run.json").read_text())
    return ModelRun(
        model_id,
        task,
        info["dataset_version"],
        out,
        out / "model.pt",
        out / "model.onnx",
        load_predictions(out / "predictions.npz"),
        info,
    )


@dataclass
class Evaluation:
    model_id: str
    report: dict[str, Any]
    metrics: list[dict[str, Any]]
    headline: float
    headline_metric: str


COMPACT_TABLE = "compact.json"  # models.compact's table of the model's compact variants


@dataclass
class _Scores:
    rows: list[dict[str, Any]]
    metric: str
    headline: float
    summary: dict[str, Any]
    report: dict[str, Any]


@dataclass(frozen=True)
class Headline:
    """The figure a model is judged (and promoted) by, on its held-out faces, beside what a model
    that learned nothing scores there."""

    metric: str
    value: float
    baseline: float
    rows: list[dict[str, Any]]  # every eval_metrics row of the held-out predictions


def held_out_headline(run: ModelRun) -> Headline:
    task = run.settings().task  # with the run's AUs, thresholds and headline
    rows = evaluate_folds(task, run.folds)
    return Headline(task.headline, overall(rows, task.headline), task.trivial_baseline(run.folds), rows)


def _score_and_report(wh: Warehouse, run: ModelRun) -> _Scores:
    info = run.info
    settings = run.settings()
    task = settings.task  # with the run's AUs, thresholds and headline
    mc = info["network"]
    scored = held_out_headline(run)
    rows, metric, headline, baseline = scored.rows, scored.metric, scored.value, scored.baseline
    rows.append({"fold": None, "metric": "trivial_baseline", "label": "", "value": baseline})
    summary = {
        "model id": run.model_id,
        "architecture": mc["architecture"],
        "loss": settings.loss_description,
        "backbone weights": info["weights_source"],
        "image size": mc["image_size"],
        "protocol": info["protocol"],
        "faces": info["n_faces"],
        "groups": render.collapsed(info["groups"]),
        "validation": _validation(info["folds"]),
        "epochs per fold": ", ".join(str(f["epochs"]) for f in info["folds"]),
        "training seconds": round(info["seconds"], 1),
        "trivial baseline": f"{render.pct(baseline)} % ({task.baseline_description} on the same held-out faces)",
    }
    compact_file = run.directory / COMPACT_TABLE
    compact = json.loads(compact_file.read_text()) if compact_file.is_file() else None
    block = _headline_block(wh, run.model_id, task, scored)
    report = write_report(
        wh.home / report_folder(run),
        task=task,
        title=f"{task.name.upper()} model {run.model_id}",
        dataset_version=run.dataset_version,
        model=summary,
        folds=run.folds,
        compact=compact,
        headline=block,
        summary=f"{task.headline_name} {render.pct(scored.value)} % ({scored.metric}; trivial baseline "
        f"{render.pct(scored.baseline)} %); production model: {block[-1][1]}",
    )
    return _Scores(rows, metric, headline, summary, report)


def _validation(folds: list[dict[str, Any]]) -> str:
    """How each fold chose its validation faces, as text: "fold 0: held-out groups a, b; ..."
    (once when every fold says the same). Runs stored before the groups were written as text
    hold a Python list in the description: its brackets and quotes are dropped."""
    said = {
        f.get("fold", i): _LIST_REPR.sub(lambda m: m.group(1).replace("'", ""), str(f["validation"]))
        for i, f in enumerate(folds)
    }
    if len(set(said.values())) == 1:
        return next(iter(said.values()))
    return "; ".join(f"fold {k}: {v}" for k, v in said.items())


_LIST_REPR = re.compile(r"\[([^\]]*)\]")


def _headline_block(wh: Warehouse, model_id: str, task: Task, scored: Headline) -> list[tuple[str, str]]:
    """The report's first block, in %: the figure promotion compares, its trivial baseline, and
    the production model's figure (as stored when it was evaluated)."""
    production = wh.sql(
        f"SELECT p.model_id, m.value, r.dataset_version FROM ({production_models_sql()}) p "
        "LEFT JOIN eval_metrics m ON m.model_id = p.model_id AND m.metric = $metric "
        "AND m.fold IS NULL AND m.label = '' "
        "LEFT JOIN model_runs r ON r.model_id = p.model_id WHERE p.task = $task",
        params={"metric": scored.metric, "task": task.name},
    ).to_pylist()
    if not production:
        now = "none promoted yet"
    elif production[0]["model_id"] == model_id:
        now = "this model"
    else:
        p = production[0]
        figure = "not evaluated" if p["value"] is None else f"{render.pct(p['value'])} %"
        now = f"{figure} ({p['model_id']}, on {p['dataset_version']})"
    return [
        (
            f"{task.headline_name} ({scored.metric}, %), the figure promotion compares",
            f"**{render.pct(scored.value)}**",
        ),
        (f"Trivial baseline (%): {task.baseline_description}", render.pct(scored.baseline)),
        (f"Production {task.name} model", now),
    ]


def write_model_report(wh: Warehouse, run: ModelRun) -> dict[str, Any]:
    """(Re)write the model's report folder, reports/<version>/<model_id>/, from its held-out
    predictions (and its compact variants' table, when models.compact has made one). Returns
    {"markdown", "html", "plots"}.

    Raises:
        OSError: the folder cannot be written.
    """
    return _score_and_report(wh, run).report


def evaluate_model(wh: Warehouse, model_id: str) -> Evaluation:
    """The report of a trained model's held-out predictions, and its numbers in eval_metrics
    and model_runs (re-evaluating replaces nothing and duplicates nothing: keys are stable).

    Raises:
        FileNotFoundError: no model of that id in the data root.
    """
    run = load_run(wh, model_id)
    info = run.info
    mc = info["network"]
    scores = _score_and_report(wh, run)
    rows, metric, headline, report = scores.rows, scores.metric, scores.headline, scores.report
    wh.append(
        "eval_metrics",
        pa.Table.from_pylist(
            [
                {
                    "model_id": model_id,
                    "dataset_version": run.dataset_version,
                    "task": run.task,
                    "fold": r["fold"],
                    "metric": r["metric"],
                    "label": r["label"],
                    "value": float(r["value"]),
                }
                for r in rows
            ]
        ),
    )
    rel = lambda p: str(Path(p).relative_to(wh.home))  # noqa: E731
    wh.append(
        "model_runs",
        pa.Table.from_pylist(
            [
                {
                    "model_id": model_id,
                    "task": run.task,
                    "architecture": mc["architecture"],
                    "loss": scores.summary["loss"],
                    "dataset_version": run.dataset_version,
                    "config": json.dumps(
                        {"settings": info["settings"], "network": mc, "protocol": info["protocol"]}
                    ),
                    "weights_source": info["weights_source"],
                    "created_at": datetime.fromisoformat(info["created_at"]),
                    "checkpoint": rel(run.checkpoint),
                    "onnx": rel(run.onnx),
                    "report": rel(report["markdown"]),
                    "headline_metric": metric,
                    "headline_value": headline,
                }
            ]
        ),
    )
    log.info("%s: %s %.3f; report %s", model_id, metric, headline, report["markdown"])
    return Evaluation(model_id, report, rows, headline, metric)


def check_exports(run: ModelRun, n: int = 8) -> dict[str, Any]:
    """Reload the checkpoint: are its weights finite, and how far apart are its outputs and the
    ONNX file's on the same inputs (largest absolute difference)?

    Raises:
        FileNotFoundError: the checkpoint or the ONNX file is missing.
    """
    model, config, _ = load_checkpoint(run.checkpoint)
    finite = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    x = torch.randint(0, 256, (n, config.channels, config.image_size, config.image_size), dtype=torch.uint8)
    x = normalize(x, config)
    with torch.no_grad():
        torch_prob = WithProbabilities(model, config.task)(x).numpy()
    onnx_prob = onnx_predict(run.onnx, x.numpy())
    return {"weights_finite": finite, "onnx_max_abs_diff": float(np.abs(torch_prob - onnx_prob).max())}


@dataclass
class LossComparison:
    avg_f1: dict[str, float]
    model_ids: dict[str, str]
    report: dict[str, Any]


def compare_losses(
    wh: Warehouse,
    version: str,
    settings: AUTrainingSettings,
    losses: Sequence[str] = ("bce", "lsep", "pr"),
) -> LossComparison:
    """Seed 000's experiment: `settings` with each of `losses` (the same backbone and folds:
    group_kfold is deterministic), one AU model per loss, each evaluated, then one report side by side.

    Raises:
        ConfigError: an unknown loss. Otherwise as `train_model`.
    """
    runs = [settings.replace(loss=loss) for loss in losses]  # every loss checked before any training
    results: dict[str, list[FoldPredictions]] = {}
    ids: dict[str, str] = {}
    scores: dict[str, float] = {}
    for each in runs:
        run = train_model(wh, version, each)
        ev = evaluate_model(wh, run.model_id)
        results[each.loss], ids[each.loss], scores[each.loss] = run.folds, run.model_id, ev.headline
    report = compare_losses_report(
        wh.home / "reports" / version / f"au-loss-comparison-{settings.architecture}",
        dataset_version=version,
        results=results,
    )
    return LossComparison(scores, ids, report)
