"""Training: the seeds' two-stage transfer recipe, and from-scratch training for the seed-003 CNN.

    result = fit(faces, train_idx, val_idx, AUTrainingSettings(loss="pr"))
    folds = cross_validate(faces, AUTrainingSettings(folds=3))   # subject-exclusive

Stage 1 (head only): the backbone is frozen and its BatchNorm layers stay in eval mode, so
its pooled features are a fixed function of the input: they are computed once and the head
trains on them (epochs cost milliseconds instead of a backbone pass each), with early
stopping on the validation loss (with `degrade`, the features of degraded copies of a share of
the training faces join them: see models.data.Augment). Stage 2 (fine-tuning): all or the last N backbone blocks
train with the head at a low learning rate (Adam 1e-5, seeds 000/002), on augmented batches,
learning rate x0.5 after a plateau of the validation loss (seed 004), keeping the best epoch.
The same code runs on CUDA (with float16 autocast and a grad scaler) and on the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import Augment, Faces, group_kfold, iterate_batches, validation_split
from models.device import torch_device
from models.networks import ModelConfig, TransferNet, build_model, normalization, normalize
from models.predictions import FoldPredictions
from models.settings import TrainingSettings

log = logging.getLogger(__name__)
# Called with each epoch's history row ({"stage", "epoch", "train_loss", "val_loss", ...}) as soon as
# the epoch is validated; an exception it raises (e.g. a hyper-parameter search pruning the
# trial: models.tuning) stops the training and propagates out of `fit`.
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    validation: str = ""
    train_images_per_s: float = 0.0
    seconds: float = 0.0


# ---- the loops ------------------------------------------------------------------------------
class BestEpoch:
    """Early stopping on the validation loss that keeps the best epoch's weights."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.state, self.stale = patience, math.inf, None, 0

    def should_stop(self, val_loss: float, model: nn.Module) -> bool:
        if val_loss < self.best - 1e-6:
            self.best, self.state, self.stale = val_loss, copy.deepcopy(model.state_dict()), 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _autocast(device: torch.device, config: TrainingSettings):
    enabled = config.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    faces: Faces,
    idx: np.ndarray,
    model_config: ModelConfig,
    device: torch.device,
    batch_size: int = 128,
    amp: bool = True,
) -> torch.Tensor:
    """Logits for faces[idx], in index order, on the CPU."""
    model.eval()
    out = []
    enabled = amp and device.type == "cuda"
    for x, _ in iterate_batches(faces, np.asarray(idx), batch_size, device):
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled):
            out.append(model(normalize(x, model_config)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def predict_embeddings(
    model: nn.Module, faces: Faces, idx: np.ndarray, model_config: ModelConfig, device: torch.device
) -> np.ndarray:
    """The backbone's pooled features (what the head reads) of faces[idx], in index order.

    Raises:
        ValueError: the network has no backbone embedding (a from-scratch CNN).
    """
    if not isinstance(model, TransferNet):
        raise ValueError(f"{type(model).__name__} has no backbone embedding")
    model.eval()
    out = [
        model.embed(normalize(x, model_config)).float().cpu()
        for x, _ in iterate_batches(faces, np.asarray(idx), 128, device)
    ]
    return torch.cat(out).numpy() if out else np.empty((0, model.n_features), np.float32)


def _augmentation(mc: ModelConfig, tc: TrainingSettings, **fields: Any) -> Augment:
    stats = normalization(mc)
    return Augment(**{"degrade": tc.degrade, "mean": stats and stats[0], "std": stats and stats[1], **fields})


@torch.no_grad()
def _embed(
    model: TransferNet,
    faces: Faces,
    idx: np.ndarray,
    mc: ModelConfig,
    device,
    tc: TrainingSettings,
    degrade=None,
):
    """Pooled features of faces[idx] (and their targets); `degrade`: an Augment that degrades them all."""
    model.eval()
    feats = []
    gen = torch.Generator().manual_seed(tc.seed + 1)
    for x, y in iterate_batches(faces, idx, 128, device):
        x = normalize(x, mc)
        if degrade is not None:
            x = degrade(x, y, gen)
        with _autocast(device, tc):
            feats.append(model.embed(x).float())
    return torch.cat(feats), torch.from_numpy(faces.targets[idx]).to(device)


def _train_head(
    model: TransferNet, faces, train_idx, val_idx, mc, tc, criterion, device, on_epoch=None
) -> list[dict]:
    """Stage 1 on cached pooled features: only the head's parameters move."""
    model.freeze_backbone(0)
    z_train, y_train = _embed(model, faces, train_idx, mc, device, tc)
    if tc.augment and tc.degrade > 0:  # the head learns on degraded copies of a `degrade` share too
        rng = np.random.default_rng(tc.seed)
        some = np.sort(rng.permutation(train_idx)[: round(len(train_idx) * tc.degrade)])
        only_degrade = _augmentation(mc, tc, flip=0.0, zoom_out=0.0, half_join=0.0, degrade=1.0)
        z_deg, y_deg = _embed(model, faces, some, mc, device, tc, only_degrade)
        z_train, y_train = torch.cat([z_train, z_deg]), torch.cat([y_train, y_deg])
    z_val, y_val = _embed(model, faces, val_idx, mc, device, tc)
    head = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(head, lr=tc.head_lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    keeper, history = BestEpoch(tc.patience), []
    began = time.perf_counter()
    for epoch in range(tc.head_epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(z_train), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(order), tc.batch_size):
            b = order[start : start + tc.batch_size]
            if len(b) < 2:  # BatchNorm needs two samples
                continue
            loss = criterion(model.head_forward(z_train[b]), y_train[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        model.eval()
        with torch.no_grad():
            val = float(criterion(model.head_forward(z_val), y_val))
        history.append(
            {"stage": "head", "epoch": epoch + 1, "train_loss": total / len(z_train), "val_loss": val}
        )
        # head epochs take milliseconds on cached features: one line each only at DEBUG
        log.debug(
            "head epoch %d/%d: train loss %.4f, val loss %.4f, %.2fs",
            epoch + 1,
            tc.head_epochs,
            history[-1]["train_loss"],
            val,
            time.perf_counter() - started,
        )
        if on_epoch is not None:
            on_epoch(history[-1])
        if keeper.should_stop(val, model):
            break
    keeper.restore(model)
    log.info(
        "head: %d epochs, best val loss %.4f, %.1fs", len(history), keeper.best, time.perf_counter() - began
    )
    return history


def _train_full(
    model, faces, train_idx, val_idx, mc, tc, criterion, device, epochs, lr, stage, on_epoch=None
) -> tuple[list[dict], float]:
    """Whole-network epochs on augmented batches, lr x0.5 on plateau, best epoch kept."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp and device.type == "cuda")
    augment = _augmentation(mc, tc) if tc.augment else None
    gen = torch.Generator().manual_seed(tc.seed)
    keeper, history = BestEpoch(tc.patience), []
    seen, busy = 0, 0.0
    for epoch in range(epochs):
        model.train()
        total, started = 0.0, time.perf_counter()
        for x, y in iterate_batches(faces, train_idx, tc.batch_size, device, True, tc.seed + epoch):
            if len(x) < 2:  # BatchNorm needs two samples
                continue
            x = normalize(x, mc)
            if augment is not None:
                x = augment(x, y, gen)
            with _autocast(device, tc):
                loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        busy += time.perf_counter() - started
        seen += len(train_idx)
        val_logits = predict_logits(model, faces, val_idx, mc, device, amp=tc.amp).to(device)
        y_val = torch.from_numpy(faces.targets[val_idx]).to(device)
        val = float(criterion(val_logits, y_val))
        sched.step(val)
        history.append(
            {
                "stage": stage,
                "epoch": epoch + 1,
                "train_loss": total / max(len(train_idx), 1),
                "val_loss": val,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
        )
        log.info(
            "%s epoch %d/%d: train loss %.4f, val loss %.4f, %.1fs",
            stage,
            epoch + 1,
            epochs,
            history[-1]["train_loss"],
            val,
            history[-1]["seconds"],
        )
        if on_epoch is not None:
            on_epoch(history[-1])
        if keeper.should_stop(val, model):
            break
    keeper.restore(model)
    return history, (seen / busy if busy else 0.0)


def fit(
    faces: Faces,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainingSettings,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train one model of `settings` on faces[train_idx], early-stopped on faces[val_idx]: a
    transfer network head-only then fine-tuned (`finetune_epochs`), a from-scratch network for
    `scratch_epochs`. `on_epoch` (optional) sees every epoch's history row of every stage as it
    ends; what it raises stops the training and propagates. Progress (one line per epoch) goes to
    this module's logger.

    Raises:
        ValueError: fewer than 2 training or 1 validation samples.
        ConfigError: the settings' device is not on this machine (models.device).
    """
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise ValueError(f"too few samples to train: {len(train_idx)} train, {len(val_idx)} validation")
    _seed_everything(settings.seed)
    device = torch_device(settings.device)
    started = time.perf_counter()
    mc = settings.network()
    model = build_model(mc).to(device)
    criterion = settings.criterion(faces.targets[train_idx], device)
    result = FitResult(model=model)
    full: tuple[int, float, str] | None = (settings.scratch_epochs, settings.scratch_lr, "scratch")
    if isinstance(model, TransferNet):
        result.history += _train_head(
            model, faces, train_idx, val_idx, mc, settings, criterion, device, on_epoch
        )
        full = None
        if settings.finetune_epochs > 0:
            model.freeze_backbone(settings.finetune_blocks)
            full = (settings.finetune_epochs, settings.finetune_lr, "finetune")
    if full is not None:
        epochs, lr, stage = full
        hist, rate = _train_full(
            model,
            faces,
            train_idx,
            val_idx,
            mc,
            settings,
            criterion,
            device,
            epochs,
            lr,
            stage,
            on_epoch,
        )
        result.history += hist
        result.train_images_per_s = rate
    result.best_val_loss = min(h["val_loss"] for h in result.history)
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


# ---- evaluation protocols -------------------------------------------------------------------
@dataclass
class FoldRun:
    predictions: FoldPredictions
    fit: FitResult
    val_idx: np.ndarray
    test_idx: np.ndarray


def predict_probabilities(
    model: nn.Module, faces: Faces, idx: np.ndarray, settings: TrainingSettings
) -> np.ndarray:
    """The task's probabilities (its output activation) of faces[idx], in index order, as numpy."""
    logits = predict_logits(
        model, faces, idx, settings.network(), torch_device(settings.device), amp=settings.amp
    )
    return settings.task.probabilities(logits).numpy()


def fold_predictions(
    faces: Faces, fold: int, fitted: FitResult, val_idx, test_idx, settings: TrainingSettings
) -> FoldPredictions:
    """A fitted model's probabilities on faces[test_idx], with the task's thresholds chosen on
    faces[val_idx] (never on the test faces)."""
    task = settings.task

    def prob(idx: np.ndarray) -> np.ndarray:
        return predict_probabilities(fitted.model, faces, idx, settings)

    test_prob = prob(test_idx)
    thresholds = task.thresholds(faces.targets[val_idx], lambda: prob(val_idx))
    return FoldPredictions(
        fold=fold,
        labels=list(faces.labels),
        y_true=task.true_labels(faces.targets[test_idx]),
        prob=test_prob,
        thresholds=thresholds,
        groups=sorted(set(faces.groups[test_idx].tolist())),
        crop_ids=[faces.crop_ids[i] for i in test_idx],
    )


def cross_validate(faces: Faces, settings: TrainingSettings) -> list[FoldRun]:
    """Subject-exclusive `settings.folds`-fold: each fold's model never sees the people it is tested
    on; its validation data (early stopping, thresholds) come from its training people.

    Raises:
        ValueError: fewer groups than folds.
    """
    runs = []
    k = settings.folds
    for fold, (train_all, test_idx) in enumerate(group_kfold(faces.groups, k)):
        train_idx, val_idx, how = validation_split(faces.groups, train_all, seed=settings.seed)
        log.info(
            "fold %d/%d: %d train, %d val (%s), %d test",
            fold + 1,
            k,
            len(train_idx),
            len(val_idx),
            how,
            len(test_idx),
        )
        fitted = fit(faces, train_idx, val_idx, settings)
        fitted.validation = how
        preds = fold_predictions(faces, fold, fitted, val_idx, test_idx, settings)
        runs.append(FoldRun(preds, fitted, val_idx, test_idx))
    return runs


def split_indices(faces: Faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dataset version's own train / val / test split (FER-2013's Usage column)."""
    parts = tuple(np.flatnonzero(faces.splits == s) for s in ("train", "val", "test"))
    for name, part in zip(("train", "val", "test"), parts):
        if len(part) == 0:
            raise ValueError(f"the dataset version has no {name} rows for the {faces.task} task")
    return parts


def holdout(faces: Faces, settings: TrainingSettings) -> list[FoldRun]:
    """Train on the version's train split, early-stop on val, test on test (FER-2013's protocol).

    Raises:
        ValueError: the version has no train, val or test rows for the task.
    """
    train_idx, val_idx, test_idx = split_indices(faces)
    log.info("holdout: %d train, %d val, %d test", len(train_idx), len(val_idx), len(test_idx))
    fitted = fit(faces, train_idx, val_idx, settings)
    fitted.validation = "the version's val split"
    return [
        FoldRun(
            fold_predictions(faces, 0, fitted, val_idx, test_idx, settings),
            fitted,
            val_idx,
            test_idx,
        )
    ]
