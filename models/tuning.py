"""Bayesian hyper-parameter search (seed 004): Optuna's TPE sampler, seeded, and its median pruner
over the fields of a training settings object, minimising the validation loss.

    result = tune(wh, version, EmotionTrainingSettings(architecture="fer2013_cnn"), TuningSettings())
    result.best_settings            # the base settings with the best trial's values: a TrainingSettings
    # ferlab train emotion --from-settings <home>/tuning/<version>/<study id>/best_settings.json

Search space (seed 004), each name mapped onto the settings field it sets:
    class_weight_mu   seed 004's class-weight mu, log-uniform 0.25-4 (emotion models only)
    epochs            scratch_epochs (fer2013_cnn) or finetune_epochs (transfer networks),
                      TuningSettings.min_epochs..max_epochs
    batch_size        one of TuningSettings.batch_sizes
    dropout           dropout of the transfer head, 0-0.6 (transfer networks only: fer2013_cnn has none)
    lr                the initial learning rate of the stage that trains the whole network:
                      scratch_lr 1e-4-1e-2 (fer2013_cnn) or finetune_lr 1e-6-1e-3 (transfer), log-uniform
    weight_decay      L2, log-uniform 1e-6-1e-2
    finetune_blocks   backbone blocks fine-tuned, 1..all (transfer networks only)
Seed 004's "dense layers" is not searched: the networks' heads are fixed (models.networks; a
transfer head is GAP -> BN -> ReLU -> Dropout -> Linear, fer2013_cnn ends in Dense(132) -> Dense(7)),
and a head of N dense layers would be a new network, not a setting.

Objective: the best validation loss of one `fit` (models.train), never a test face: with the
holdout protocol (folds 0, emotion's default), trained on the version's train split and validated
on its val split; with k-fold (AU), trained and validated on a group-exclusive validation split
(models.data.validation_split) of the people outside the version's test split. Every trial sees the same faces (loaded once) and the same
split; the validation loss of each epoch (best so far) is reported to the pruner, which stops a
trial whose loss is worse than the median of earlier trials at the same epoch. The loss is the
training loss of the base settings, except where class_weight_mu is searched: class weights change
the loss itself, so the objective is then the unweighted cross-entropy of the trial's kept model
(Keras' val_loss, what seed 004 minimised); the pruner still sees each trial's own loss per epoch.

Written to <home>/tuning/<version>/<study id>/ (replaced whole on a re-run, like a report):
    trials.parquet       one row per trial: state (complete, pruned, fail), value (the objective; NaN
                         unless complete), trial_loss (its best validation loss under its own training
                         loss), epochs_run, seconds, best, one column per searched parameter
    best_settings.json   {"settings": {"kind", "settings"}, ...}: `models.settings.load_settings` reads it
    report.md/.html      the trials table, the best configuration, the command that trains it
    history.png          validation loss per trial and best so far

Optuna is imported when a search runs, not with this module (the Dagster definitions import it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import Field, field_validator, model_validator

from models import render
from models.data import Faces, load_faces, validation_split
from models.device import torch_device
from models.networks import BACKBONES, build_model
from models.settings import TrainingSettings
from models.train import fit, predict_logits
from warehouse import Warehouse
from warehouse.hashing import stable_id
from warehouse.settings import Settings
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)

PARAMETERS = (
    "class_weight_mu",
    "epochs",
    "batch_size",
    "dropout",
    "lr",
    "weight_decay",
    "finetune_blocks",
)
NOT_SUPPORTED = {
    "dense_layers": "the networks' heads are fixed (models.networks): a number of dense layers is a "
    "different network, not a training setting",
}
BEST_SETTINGS_FILE = "best_settings.json"
TRIALS_FILE = "trials.parquet"


class TuningSettings(Settings):
    """A hyper-parameter search: how many trials, the sampler's seed, a time limit, what is searched.
    (The training settings being tuned are a separate object: the search starts from them. Field
    names differ from theirs, e.g. `sampler_seed` beside their `seed`, so that `ferlab tune` and
    the tuning assets' Dagster config take both as flat flags.)"""

    trials: int = Field(10, ge=1, description="trials to run (seed 004: 10)")
    sampler_seed: int = Field(0, ge=0, description="seed of the TPE sampler (same seed, same trials)")
    timeout: float | None = Field(
        None, gt=0, description="start no trial after this many seconds; unset: no limit"
    )
    search: tuple[str, ...] = Field(
        PARAMETERS,
        min_length=1,
        description="the parameters searched (those that do not apply to the network are skipped): "
        + ", ".join(PARAMETERS),
    )
    min_epochs: int = Field(5, ge=1, description="fewest epochs a trial may be given")
    max_epochs: int = Field(30, ge=1, description="most epochs a trial may be given")
    batch_sizes: tuple[int, ...] = Field((16, 32, 64, 128), min_length=1, description="batch sizes tried")
    startup_trials: int = Field(
        4, ge=1, description="random trials before TPE models the results (and before the pruner prunes)"
    )
    pruner: Literal["median", "none"] = Field(
        "median", description="median: stop a trial worse than the median of earlier ones at the same epoch"
    )
    prune_warmup_epochs: int = Field(3, ge=0, description="epochs of every trial never pruned")

    @field_validator("search")
    @classmethod
    def _known_parameters(cls, search: tuple[str, ...]) -> tuple[str, ...]:
        for name in search:
            if name in NOT_SUPPORTED:
                raise ValueError(f"{name} cannot be searched: {NOT_SUPPORTED[name]}")
            if name not in PARAMETERS:
                raise ValueError(f"unknown parameter {name!r}; known: {', '.join(PARAMETERS)}")
        if len(set(search)) != len(search):
            raise ValueError("a parameter is named twice")
        return search

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if min(sizes) < 2:
            raise ValueError("batch sizes must be >= 2 (BatchNorm needs two samples)")
        return tuple(sorted(set(sizes)))

    @model_validator(mode="after")
    def _epoch_range(self) -> TuningSettings:
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs {self.min_epochs} > max_epochs {self.max_epochs}")
        return self


# ---- the search space -----------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched parameter: the settings field it sets and how Optuna draws it."""

    name: str
    target: str  # the TrainingSettings field
    kind: Literal["float", "int", "categorical"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        scale = " (log)" if self.log else ""
        return f"{self.low:g} to {self.high:g}{scale}"


def search_space(base: TrainingSettings, settings: TuningSettings) -> tuple[list[Dimension], dict[str, str]]:
    """The dimensions searched for `base`'s task and network, and {parameter: why it is skipped}
    for the requested ones that do not apply (plus the seed's dense layers, never searched)."""
    transfer = base.architecture in BACKBONES  # a TransferNet: head, then fine-tuning
    dims: list[Dimension] = []
    skipped: dict[str, str] = {}
    for name in settings.search:
        if name == "class_weight_mu":
            if "class_weight_mu" not in type(base).model_fields:
                skipped[name] = f"{base.kind} models have no class weights"
            else:
                dims.append(Dimension(name, name, "float", 0.25, 4.0, log=True))
        elif name == "epochs":
            target = "finetune_epochs" if transfer else "scratch_epochs"
            dims.append(Dimension(name, target, "int", settings.min_epochs, settings.max_epochs))
        elif name == "batch_size":
            dims.append(Dimension(name, name, "categorical", choices=settings.batch_sizes))
        elif name == "dropout":
            if transfer:
                dims.append(Dimension(name, name, "float", 0.0, 0.6))
            else:
                skipped[name] = "fer2013_cnn has no dropout layer"
        elif name == "lr":
            if transfer:
                dims.append(Dimension(name, "finetune_lr", "float", 1e-6, 1e-3, log=True))
            else:
                dims.append(Dimension(name, "scratch_lr", "float", 1e-4, 1e-2, log=True))
        elif name == "weight_decay":
            dims.append(Dimension(name, name, "float", 1e-6, 1e-2, log=True))
        elif name == "finetune_blocks":
            if not transfer:
                skipped[name] = "fer2013_cnn trains from scratch: nothing is frozen"
            else:
                n_blocks = len(build_model(dataclasses.replace(base.network(), weights="")).blocks)
                dims.append(Dimension(name, name, "int", 1, n_blocks))
    skipped["dense_layers"] = NOT_SUPPORTED["dense_layers"]
    return dims, skipped


# ---- the data every trial sees --------------------------------------------------------------
def tuning_split(faces: Faces, holdout: bool, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, validation, description) for the search, as the settings' protocol validates, and
    never a face of the version's test split. `holdout` (folds == 0, emotion's default): the
    version's train and val splits. k-fold (AU): a group-exclusive validation split of the people
    outside the test split (what `cross_validate` does within a fold's training people).

    Raises:
        ValueError: too few faces for a split.
    """
    if holdout:
        train_idx, val_idx = (np.flatnonzero(faces.splits == s) for s in ("train", "val"))
        how = "the version's train split, validated on its val split"
    else:
        pool = np.flatnonzero(faces.splits != "test")
        if len(pool) == 0:
            raise ValueError(f"the dataset version has no {faces.task} faces outside its test split")
        train_idx, val_idx, split = validation_split(faces.groups, pool, seed=seed)
        how = f"the people outside the version's test split; validation: {split}"
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise ValueError(
            f"too few {faces.task} faces to tune on: {len(train_idx)} train, {len(val_idx)} validation ({how})"
        )
    return train_idx, val_idx, how


# ---- the search -----------------------------------------------------------------------------
@dataclass
class TuningResult:
    study_id: str
    task: str
    dataset_version: str
    directory: Path
    trials: list[dict[str, Any]]  # the rows of trials.parquet
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_settings: TrainingSettings
    best_settings_path: Path
    skipped: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def train_command(self) -> str:
        """The one command that trains the best configuration."""
        return (
            f"ferlab train {self.task} --from-settings {self.best_settings_path} "
            f"--version {self.dataset_version}"
        )


def study_id_for(version: str, base: TrainingSettings, settings: TuningSettings) -> str:
    """Same version + base settings + search -> same id (a re-run replaces the study)."""
    digest = stable_id(
        version,
        json.dumps(base.to_dict(), sort_keys=True),
        json.dumps(settings.model_dump(mode="json"), sort_keys=True),
    )[:10]
    return f"{base.kind}-{base.architecture}-{digest}"


def tuning_dir(wh: Warehouse, version: str, study_id: str) -> Path:
    return wh.home / "tuning" / version / study_id


def tune(
    wh: Warehouse,
    version: str,
    base: TrainingSettings,
    settings: TuningSettings | None = None,
) -> TuningResult:
    """Search `settings.search` around `base` (every other field stays as in `base`) for the
    lowest validation loss on the version, `settings.trials` trials; write the trials table, the
    best settings and the report under <home>/tuning/<version>/<study id>/.

    Raises:
        LookupError: no such dataset version.
        ValueError: too few faces for the split; no trial completed.
        ConfigError: the settings' device is not on this machine.
        ImportError: Optuna is not installed (a pinned dependency of the project).
    """
    import optuna

    settings = settings or TuningSettings()
    started = time.perf_counter()
    study_id = study_id_for(version, base, settings)
    dims, skipped = search_space(base, settings)
    manifest = read_manifest(wh, version)
    network = base.network()
    faces = load_faces(wh.home, manifest, base.task, network.image_size, network.channels)
    train_idx, val_idx, how = tuning_split(faces, base.folds == 0, base.seed)
    log.info(
        f"tuning {study_id}: {settings.trials} trials over {', '.join(d.name for d in dims)}; "
        f"{len(train_idx)} train, {len(val_idx)} validation faces ({how})"
    )

    # Class weights change the loss itself: a trial's own weighted loss would not compare with
    # another's, so with mu searched the objective is the unweighted loss (Keras' val_loss, seed 004's).
    device = torch_device(base.device)
    yardstick, objective_loss = None, base.loss_description
    if any(d.name == "class_weight_mu" for d in dims):
        plain = base.replace(class_weight_mu=None)
        yardstick = plain.criterion(faces.targets[train_idx], device)
        objective_loss = plain.loss_description + " (unweighted: class weights change with mu)"

    def trial_settings(params: dict[str, Any]) -> TrainingSettings:
        return base.replace(**{d.target: params[d.name] for d in dims if d.name in params})

    def objective(trial) -> float:
        params = {d.name: d.suggest(trial) for d in dims}
        run = trial_settings(params)
        best, step = math.inf, 0
        t0 = time.perf_counter()

        def on_epoch(row: dict[str, Any]) -> None:
            nonlocal best, step
            if row["val_loss"] < best:  # NaN never is
                best = row["val_loss"]
            trial.set_user_attr("epochs", step + 1)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.report(best, step)
            step += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"val loss {best:.4f} after {step} epochs")

        fitted = fit(faces, train_idx, val_idx, run, on_epoch)
        trial.set_user_attr("train_criterion_val_loss", fitted.best_val_loss)
        value = fitted.best_val_loss
        if yardstick is not None:  # the kept (best-epoch) model under the trial-independent loss
            logits = predict_logits(fitted.model, faces, val_idx, network, device, amp=run.amp).to(device)
            value = float(yardstick(logits, torch.from_numpy(faces.targets[val_idx]).to(device)))
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return value

    def report_trial(study, trial) -> None:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        log.info(f"trial {trial.number}: {trial.state.name.lower()}, val loss {value}, {trial.params}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed, n_startup_trials=settings.startup_trials)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.prune_warmup_epochs
        )
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner, study_name=study_id)
    study.optimize(
        objective, n_trials=settings.trials, timeout=settings.timeout, callbacks=[report_trial], catch=()
    )
    complete = [
        t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    if not complete:
        raise ValueError(f"tuning {study_id}: no trial completed ({len(study.trials)} ran)")
    best = min(complete, key=lambda t: t.value)
    best_settings = trial_settings(best.params)
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": float(t.value) if t.state == optuna.trial.TrialState.COMPLETE else float("nan"),
            "trial_loss": _trial_loss(t),
            "epochs_run": int(t.user_attrs.get("epochs", 0)),
            "seconds": float(t.user_attrs.get("seconds", 0.0)),
            "best": t.number == best.number,
            **{d.name: t.params.get(d.name) for d in dims},
        }
        for t in study.trials
    ]
    out = tuning_dir(wh, version, study_id)
    best_doc = {
        "settings": best_settings.to_dict(),  # what models.settings.load_settings reads
        "study_id": study_id,
        "dataset_version": version,
        "trial": best.number,
        "best_val_loss": best.value,
        "params": best.params,
        "created_at": datetime.now(UTC).isoformat(),
    }
    result = TuningResult(
        study_id=study_id,
        task=base.kind,
        dataset_version=version,
        directory=out,
        trials=rows,
        best_trial=best.number,
        best_value=float(best.value),
        best_params=dict(best.params),
        best_settings=best_settings,
        best_settings_path=out / BEST_SETTINGS_FILE,
        skipped=skipped,
    )
    doc = _report(result, base, settings, dims, how, len(train_idx), len(val_idx), objective_loss)
    files = {
        TRIALS_FILE: lambda p: pq.write_table(_trials_table(rows, dims), p),
        BEST_SETTINGS_FILE: lambda p: p.write_text(json.dumps(best_doc, indent=1) + "\n"),
        "history.png": lambda p: _plot_history(p, rows),
    }
    result.report = render.write_folder(out, doc, f"Hyper-parameter search {study_id}", files)
    result.seconds = time.perf_counter() - started
    log.info(f"best trial {best.number}: val loss {best.value:.4f}, {best.params}; {out / 'report.md'}")
    return result


def _trial_loss(trial) -> float:
    """A trial's best validation loss under its own training loss (the last value reported to the
    pruner where it was pruned)."""
    if "train_criterion_val_loss" in trial.user_attrs:
        return float(trial.user_attrs["train_criterion_val_loss"])
    reported = trial.intermediate_values
    return float(reported[max(reported)]) if reported else float("nan")


def _trials_table(rows: list[dict[str, Any]], dims: list[Dimension]) -> pa.Table:
    types = {"float": pa.float64(), "int": pa.int64()}
    schema = [
        ("trial", pa.int64()),
        ("state", pa.string()),
        ("value", pa.float64()),
        ("trial_loss", pa.float64()),
        ("epochs_run", pa.int64()),
        ("seconds", pa.float64()),
        ("best", pa.bool_()),
    ]
    for d in dims:
        kind = "int" if d.kind == "categorical" and all(isinstance(c, int) for c in d.choices) else d.kind
        schema.append((d.name, types.get(kind, pa.string())))
    return pa.Table.from_pylist(rows, schema=pa.schema(schema))


def read_trials(directory: str | Path) -> pa.Table:
    """The trials table of a study folder."""
    return pq.read_table(Path(directory) / TRIALS_FILE)


def _fmt_param(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _report(
    result: TuningResult,
    base: TrainingSettings,
    settings: TuningSettings,
    dims: list[Dimension],
    how: str,
    n_train: int,
    n_val: int,
    objective_loss: str,
) -> render.Doc:
    doc = render.Doc([])
    doc.h(1, f"Hyper-parameter search {result.study_id}")
    states = [r["state"] for r in result.trials]
    doc.ul(
        [
            f"Task: {base.kind}, network {base.architecture}",
            f"Dataset version: {result.dataset_version}",
            f"Objective: lowest validation loss ({objective_loss}) of one training run, best epoch kept",
            f"Faces: {n_train} train, {n_val} validation: {how}; the test split is never used",
            f"Sampler: Optuna TPE, seed {settings.sampler_seed}, {settings.startup_trials} random trials "
            f"first; pruner: {settings.pruner}"
            + (
                f" (never in a trial's first {settings.prune_warmup_epochs} epochs)"
                if settings.pruner == "median"
                else ""
            ),
            f"Trials: {len(states)} run ({', '.join(f'{states.count(s)} {s}' for s in sorted(set(states)))}) "
            f"of {settings.trials} asked"
            + (f", time limit {settings.timeout:g} s" if settings.timeout else ""),
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        ]
    )
    doc.h(2, "Best configuration")
    doc.p(f"Trial {result.best_trial}: validation loss {result.best_value:.4f}.")
    doc.table(
        ["Parameter", "Setting", "Value", "Base"],
        [
            [d.name, d.target, _fmt_param(result.best_params[d.name]), _fmt_param(getattr(base, d.target))]
            for d in dims
        ],
    )
    doc.p(f"Settings: {BEST_SETTINGS_FILE} (models.settings.load_settings reads it). Train it with:")
    doc.p(f"`{result.train_command()}`")
    doc.h(2, "Search space")
    doc.table(
        ["Parameter", "Setting", "Range"],
        [[d.name, d.target, d.describe()] for d in dims],
    )
    if result.skipped:
        doc.p("Not searched:")
        doc.ul([f"{name}: {why}" for name, why in result.skipped.items()])
    doc.h(2, "Trials")
    doc.table(
        ["Trial", "State", "Objective", "Own loss", "Epochs run", "Seconds"] + [d.name for d in dims],
        [
            [
                str(r["trial"]) + (" (best)" if r["best"] else ""),
                r["state"],
                render.fmt(r["value"]),
                render.fmt(r["trial_loss"]),
                str(r["epochs_run"]),
                f"{r['seconds']:.1f}",
            ]
            + [_fmt_param(r[d.name]) for d in dims]
            for r in result.trials
        ],
    )
    doc.img("history.png", "validation loss per trial and best so far")
    doc.p(f"Every trial trains the base settings with its values; base: `{json.dumps(base.to_dict())}`")
    return doc


def _plot_history(path: Path, rows: list[dict[str, Any]]) -> Path:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    x = [r["trial"] for r in rows]
    y = [r["value"] for r in rows]
    done = [(a, b) for a, b, r in zip(x, y, rows) if r["state"] == "complete"]
    pruned = [
        (r["trial"], r["trial_loss"])
        for r in rows
        if r["state"] == "pruned" and r["trial_loss"] == r["trial_loss"]
    ]
    if done:
        ax.scatter(*zip(*done), label="complete")
        best = np.minimum.accumulate([b for _, b in done])
        ax.step([a for a, _ in done], best, where="post", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", label="pruned (own loss when stopped)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path
