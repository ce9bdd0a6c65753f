"""Train and evaluate models on a dataset version of a data root: what the Dagster assets and
`ferlab train` / `ferlab evaluate` both call.

    run = train_model(wh, version, ModelConfig(task="au", architecture="mobilenet_v2", ...),
                      TrainConfig(loss="pr"), folds=3)
    evaluation = evaluate_model(wh, run.model_id)     # report + eval_metrics + model_runs

Layout under the data root:
    models/<task>/<model_id>/model.pt, model.onnx   the production model (refit, or best fold)
                             fold-<i>.pt             every fold's model
                             predictions.npz         held-out predictions of every fold
                             run.json                configs, histories, validation, timings
    reports/<version>/<model_id>/report.md, report.html, *.png

AU models are scored by subject-exclusive k-fold cross-validation (seed 000's protocol);
emotion models by the version's train / val / test split (FER-2013's), or by k-fold too.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from models.checkpoint import export_onnx, load_checkpoint, onnx_predict, save_checkpoint
from models.data import SEED_AUS, load_faces, validation_split
from models.losses import LOSSES
from models.networks import ModelConfig, WithProbabilities, normalize
from models.report import FoldPredictions, evaluate_folds, write_report
from models.train import FoldRun, TrainConfig, cross_validate, fit, holdout
from warehouse import Warehouse
from warehouse.atomic import atomic_write_bytes
from warehouse.hashing import stable_id
from warehouse.versions import read_manifest

Progress = Callable[[str], None]
HEADLINE = {"au": "avg_f1", "emotion": "accuracy"}


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


def model_id_for(version: str, mc: ModelConfig, tc: TrainConfig, protocol: str) -> str:
    """Same version + same settings -> same id (a re-run replaces the model, never duplicates)."""
    settings = json.dumps(
        {"model": mc.to_dict(), "train": tc.to_dict(), "protocol": protocol}, sort_keys=True
    )
    loss = tc.loss if mc.task == "au" else "ce"
    return f"{mc.task}-{mc.architecture}-{loss}-{stable_id(version, settings)[:10]}"


def _save_predictions(path: Path, folds: Sequence[FoldPredictions]) -> None:
    arrays: dict[str, np.ndarray] = {"labels": np.array(folds[0].labels)}
    for p in folds:
        arrays[f"y_true_{p.fold}"] = p.y_true
        arrays[f"prob_{p.fold}"] = p.prob
        arrays[f"groups_{p.fold}"] = np.array(p.groups)
        if p.thresholds is not None:
            arrays[f"thresholds_{p.fold}"] = p.thresholds
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_predictions(path: Path) -> list[FoldPredictions]:
    with np.load(path, allow_pickle=False) as z:
        labels = [str(s) for s in z["labels"]]
        folds = sorted(int(k.rsplit("_", 1)[1]) for k in z.files if k.startswith("prob_"))
        return [
            FoldPredictions(
                fold=f,
                labels=labels,
                y_true=z[f"y_true_{f}"],
                prob=z[f"prob_{f}"],
                thresholds=z[f"thresholds_{f}"] if f"thresholds_{f}" in z.files else None,
                groups=[str(g) for g in z[f"groups_{f}"]],
            )
            for f in folds
        ]


def model_dir(wh: Warehouse, task: str, model_id: str) -> Path:
    return wh.home / "models" / task / model_id


def train_model(
    wh: Warehouse,
    version: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    folds: int = 3,
    refit: bool = False,
    aus: Sequence[int] = SEED_AUS,
    log: Progress = print,
) -> ModelRun:
    """Cross-validate (AU, or emotion with folds > 0) or hold out (emotion with folds == 0) on
    the version, then save the production model: refit on all the data when `refit`, else the
    fold model with the lowest validation loss. Every fold's model and predictions are kept."""
    task = model_config.task
    protocol = f"{folds}-fold" if folds > 0 else "holdout"
    mid = model_id_for(version, model_config, train_config, protocol)
    out = model_dir(wh, task, mid)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = read_manifest(wh, version)
    faces = load_faces(wh.home, manifest, task, model_config.image_size, model_config.channels, aus=aus)
    if task == "au":
        model_config.labels = list(faces.labels)
    log(f"{mid}: {len(faces)} {task}-labelled crops of {len(set(faces.groups))} groups, protocol {protocol}")
    runs: list[FoldRun] = (
        cross_validate(faces, model_config, train_config, folds, log)
        if folds > 0
        else holdout(faces, model_config, train_config, log)
    )
    for run in runs:
        save_checkpoint(out / f"fold-{run.predictions.fold}.pt", run.fit.model, model_config, _fit_info(run))
    if refit:
        everything = np.arange(len(faces))
        train_idx, val_idx, how = validation_split(faces.groups, everything, seed=train_config.seed)
        log(f"refit on every group: {len(train_idx)} train, {len(val_idx)} val ({how})")
        final = fit(faces, train_idx, val_idx, model_config, train_config, log)
        final_info = {"refit": True, "validation": how, "history": final.history}
    else:
        best = min(runs, key=lambda r: r.fit.best_val_loss)
        final = best.fit
        final_info = {"refit": False, "from_fold": best.predictions.fold, **_fit_info(best)}
    checkpoint = save_checkpoint(out / "model.pt", final.model, model_config, final_info)
    onnx = export_onnx(final.model.cpu(), model_config, out / "model.onnx")
    preds = [r.predictions for r in runs]
    _save_predictions(out / "predictions.npz", preds)
    info = {
        "model_id": mid,
        "task": task,
        "dataset_version": version,
        "protocol": protocol,
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
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
    atomic_write_bytes(_latest_path(wh, task, version), mid.encode())
    return ModelRun(mid, task, version, out, checkpoint, onnx, preds, info)


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


def load_run(wh: Warehouse, model_id: str) -> ModelRun:
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


def _overall(rows: Sequence[dict[str, Any]], metric: str) -> float:
    for r in rows:
        if r["metric"] == metric and r["fold"] is None and r["label"] == "":
            return float(r["value"])
    raise KeyError(f"evaluation has no overall {metric!r}")


def evaluate_model(wh: Warehouse, model_id: str, log: Progress = print) -> Evaluation:
    """The report of a trained model's held-out predictions, and its numbers in eval_metrics
    and model_runs (re-evaluating replaces nothing and duplicates nothing: keys are stable)."""
    run = load_run(wh, model_id)
    info = run.info
    mc = info["model_config"]
    rows = evaluate_folds(run.task, run.folds)
    metric = HEADLINE[run.task]
    headline = _overall(rows, metric)
    baseline = trivial_baseline(run.task, run.folds)
    rows.append({"fold": None, "metric": "trivial_baseline", "label": "", "value": baseline})
    summary = {
        "model id": model_id,
        "architecture": mc["architecture"],
        "loss": info["train_config"]["loss"] if run.task == "au" else "cross-entropy (class-weighted)",
        "backbone weights": info["weights_source"],
        "image size": mc["image_size"],
        "protocol": info["protocol"],
        "faces": info["n_faces"],
        "groups": ", ".join(info["groups"]),
        "validation": "; ".join(sorted({f["validation"] for f in info["folds"]})),
        "epochs per fold": ", ".join(str(f["epochs"]) for f in info["folds"]),
        "training seconds": round(info["seconds"], 1),
        "trivial baseline": f"{baseline:.3f} ("
        + ("Avg.F1 of calling every AU present" if run.task == "au" else "accuracy of the majority class")
        + " on the same held-out faces)",
    }
    report_dir = wh.home / "reports" / run.dataset_version / model_id
    report = write_report(
        report_dir,
        task=run.task,
        title=f"{run.task.upper()} model {model_id}",
        dataset_version=run.dataset_version,
        model=summary,
        folds=run.folds,
    )
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
                    "loss": summary["loss"],
                    "dataset_version": run.dataset_version,
                    "config": json.dumps(
                        {"model": mc, "train": info["train_config"], "protocol": info["protocol"]}
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
    log(f"{model_id}: {metric} {headline:.3f}; report {report['markdown']}")
    return Evaluation(model_id, report, rows, headline, metric)


def check_exports(run: ModelRun, n: int = 8) -> dict[str, Any]:
    """Reload the checkpoint: are its weights finite, and how far apart are its outputs and the
    ONNX file's on the same inputs (largest absolute difference)?"""
    model, config, _ = load_checkpoint(run.checkpoint)
    finite = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    x = torch.randint(0, 256, (n, config.channels, config.image_size, config.image_size), dtype=torch.uint8)
    x = normalize(x, config)
    with torch.no_grad():
        torch_prob = WithProbabilities(model, config.task)(x).numpy()
    onnx_prob = onnx_predict(run.onnx, x.numpy())
    return {"weights_finite": finite, "onnx_max_abs_diff": float(np.abs(torch_prob - onnx_prob).max())}


def trivial_baseline(task: str, folds: Sequence[FoldPredictions]) -> float:
    """What a model that learned nothing scores on the same held-out data: for AUs the Avg.F1 of
    predicting every AU present in every face; for emotions the accuracy of always answering
    the most frequent test class."""
    if task == "au":
        y = np.concatenate([p.y_true for p in folds]).astype(bool)
        prevalence = y.mean(0)
        return float(np.mean(2 * prevalence / (1 + prevalence)))
    y = np.concatenate([p.y_true for p in folds])
    return float(np.bincount(y).max() / len(y))


@dataclass
class LossComparison:
    avg_f1: dict[str, float]
    model_ids: dict[str, str]
    report: dict[str, Any]


def compare_losses(
    wh: Warehouse,
    version: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    losses: Sequence[str] = ("bce", "lsep", "pr"),
    folds: int = 3,
    log: Progress = print,
) -> LossComparison:
    """Seed 000's experiment: the same backbone and folds (group_kfold is deterministic), one
    AU model per loss, each evaluated, then one report side by side."""
    from dataclasses import replace

    from models.report import compare_losses_report

    results: dict[str, list[FoldPredictions]] = {}
    ids: dict[str, str] = {}
    scores: dict[str, float] = {}
    for loss in losses:
        run = train_model(
            wh, version, replace(model_config), replace(train_config, loss=loss), folds=folds, log=log
        )
        ev = evaluate_model(wh, run.model_id, log=log)
        results[loss], ids[loss], scores[loss] = run.folds, run.model_id, ev.headline
    report = compare_losses_report(
        wh.home / "reports" / version / f"au-loss-comparison-{model_config.architecture}",
        dataset_version=version,
        results=results,
    )
    return LossComparison(scores, ids, report)


def make_configs(
    task: str,
    architecture: str = "",
    loss: str = "bce",
    image_size: int = 224,
    weights: str = "packaged",
    alpha: float = 1.0,
    epochs: int | None = None,
    head_epochs: int = 50,
    finetune_blocks: int = -1,
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    finetune_lr: float = 1e-5,
) -> tuple[ModelConfig, TrainConfig]:
    """Model and training settings from a user's few choices (CLI flags, asset config).
    `architecture` "" means MobileNetV2 (ImageNet weights) for both tasks; "fer2013_cnn" is the
    seed-003 baseline for emotions (48 px gray, trained from scratch). `epochs` are the fine-tuning epochs of a transfer model or the epochs of the
    CNN trained from scratch. Packaged weights exist only for MobileNetV2; the other
    backbones start from random init unless `weights` names a file."""
    from warehouse.schemas import EMOTIONS

    if task == "au" and loss not in LOSSES:
        raise ValueError(f"AU loss must be one of {sorted(LOSSES)}, not {loss!r}")
    architecture = architecture or "mobilenet_v2"
    gray = architecture == "fer2013_cnn"
    if weights == "packaged" and architecture != "mobilenet_v2":
        weights = ""
    mc = ModelConfig(
        task=task,
        architecture=architecture,
        labels=[f"AU{au}" for au in SEED_AUS] if task == "au" else list(EMOTIONS),
        image_size=48 if gray else image_size,
        channels=1 if gray else 3,
        alpha=alpha,
        weights=weights,
    )
    tc = TrainConfig(
        finetune_lr=finetune_lr,
        loss=loss,
        batch_size=batch_size,
        head_epochs=head_epochs,
        finetune_blocks=finetune_blocks,
        device=device,
        seed=seed,
    )
    if epochs is not None:
        tc.finetune_epochs = epochs
        tc.scratch_epochs = epochs
    return mc, tc
