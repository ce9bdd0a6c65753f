"""Training: the seeds' two-stage transfer recipe, and from-scratch training for the seed-003 CNN.

    result = fit(faces, train_idx, val_idx, ModelConfig(task="au", ...), TrainConfig(loss="pr"))
    folds = cross_validate(faces, model_config, train_config, k=3)   # subject-exclusive

Stage 1 (head only): the backbone is frozen and its BatchNorm layers stay in eval mode, so
its pooled features are a fixed function of the input: they are computed once and the head
trains on them (epochs cost milliseconds instead of a backbone pass each), with early
stopping on the validation loss. Stage 2 (fine-tuning): all or the last N backbone blocks
train with the head at a low learning rate (Adam 1e-5, seeds 000/002), on augmented batches,
learning rate x0.5 after a plateau of the validation loss (seed 004), keeping the best epoch.
The same code runs on CUDA (with float16 autocast and a grad scaler) and on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import resolve_device
from models.data import Augment, Faces, group_kfold, iterate_batches, validation_split
from models.losses import LOSSES, emotion_class_weights
from models.metrics import choose_thresholds
from models.networks import ModelConfig, TransferNet, build_model, normalize
from models.report import FoldPredictions

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    """Optimisation settings; defaults follow the seeds (see the module docstring)."""

    loss: str = "bce"  # au: bce | lsep | pr ; emotion: always (weighted) cross-entropy
    batch_size: int = 64
    head_epochs: int = 50  # stage 1 upper bound (early stopping decides)
    head_lr: float = 1e-3
    finetune_epochs: int = 5  # stage 2; 0 skips it
    finetune_blocks: int = -1  # -1: the whole backbone; N: its last N blocks
    finetune_lr: float = 1e-5
    scratch_epochs: int = 20  # fer2013_cnn, trained from scratch (seed 003: Adam 1e-3, batch 64)
    scratch_lr: float = 1e-3
    weight_decay: float = 1e-4  # L2 (seed 004)
    patience: int = 10  # early stopping: epochs without a better validation loss (a from-scratch CNN
    # can get worse on validation for its first epochs while BatchNorm statistics settle)
    plateau_patience: int = 10  # lr x plateau_factor after this many epochs without improvement
    plateau_factor: float = 0.5
    augment: bool = True
    pos_weight: bool = False  # bce: weight positives by negatives/positives per AU
    class_weight_mu: float | None = 1.0  # emotion: seed 004's class weights (None: unweighted)
    device: str = "auto"
    amp: bool = True  # float16 autocast where the device is CUDA
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    validation: str = ""
    train_images_per_s: float = 0.0
    seconds: float = 0.0


# ---- losses ---------------------------------------------------------------------------------
def make_criterion(
    task: str, config: TrainConfig, faces: Faces, train_idx: np.ndarray, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "emotion":
        weight = None
        if config.class_weight_mu is not None:
            counts = np.bincount(faces.targets[train_idx], minlength=len(faces.labels))
            weight = emotion_class_weights(np.maximum(counts, 1).tolist(), mu=config.class_weight_mu).to(
                device
            )
        return lambda logits, y: F.cross_entropy(logits.float(), y, weight=weight)
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {config.loss!r}")
    if config.loss == "bce" and config.pos_weight:
        y = faces.targets[train_idx]
        pos = y.sum(0)
        pw = torch.tensor((len(y) - pos) / np.maximum(pos, 1), dtype=torch.float32, device=device)
        return lambda logits, y: LOSSES["bce"](logits.float(), y, pos_weight=pw)
    loss = LOSSES[config.loss]
    return lambda logits, y: loss(logits.float(), y)


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


def _autocast(device: torch.device, config: TrainConfig):
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


def probabilities(logits: torch.Tensor, task: str) -> np.ndarray:
    return (torch.sigmoid(logits) if task == "au" else torch.softmax(logits, 1)).numpy()


@torch.no_grad()
def _embed(model: TransferNet, faces: Faces, idx: np.ndarray, mc: ModelConfig, device, tc: TrainConfig):
    model.eval()
    feats = []
    for x, _ in iterate_batches(faces, idx, 128, device):
        with _autocast(device, tc):
            feats.append(model.embed(normalize(x, mc)).float())
    return torch.cat(feats), torch.from_numpy(faces.targets[idx]).to(device)


def _train_head(model: TransferNet, faces, train_idx, val_idx, mc, tc, criterion, device, log) -> list[dict]:
    """Stage 1 on cached pooled features: only the head's parameters move."""
    model.freeze_backbone(0)
    z_train, y_train = _embed(model, faces, train_idx, mc, device, tc)
    z_val, y_val = _embed(model, faces, val_idx, mc, device, tc)
    head = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(head, lr=tc.head_lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    keeper, history = BestEpoch(tc.patience), []
    for epoch in range(tc.head_epochs):
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
        if keeper.should_stop(val, model):
            break
    keeper.restore(model)
    log(f"head: {len(history)} epochs, best val loss {keeper.best:.4f}")
    return history


def _train_full(
    model, faces, train_idx, val_idx, mc, tc, criterion, device, epochs, lr, stage, log
) -> tuple[list[dict], float]:
    """Whole-network epochs on augmented batches, lr x0.5 on plateau, best epoch kept."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=tc.plateau_factor, patience=tc.plateau_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp and device.type == "cuda")
    augment = Augment() if tc.augment else None
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
        log(f"{stage} epoch {epoch + 1}/{epochs}: train {history[-1]['train_loss']:.4f} val {val:.4f}")
        if keeper.should_stop(val, model):
            break
    keeper.restore(model)
    return history, (seen / busy if busy else 0.0)


def fit(
    faces: Faces,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig,
    log: Progress = lambda _: None,
) -> FitResult:
    """Train one model on faces[train_idx], early-stopped on faces[val_idx]."""
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise ValueError(f"too few samples to train: {len(train_idx)} train, {len(val_idx)} validation")
    _seed_everything(train_config.seed)
    device = resolve_device(train_config.device)
    started = time.perf_counter()
    model = build_model(model_config).to(device)
    criterion = make_criterion(model_config.task, train_config, faces, train_idx, device)
    result = FitResult(model=model)
    full: tuple[int, float, str] | None = (train_config.scratch_epochs, train_config.scratch_lr, "scratch")
    if isinstance(model, TransferNet):
        result.history += _train_head(
            model, faces, train_idx, val_idx, model_config, train_config, criterion, device, log
        )
        full = None
        if train_config.finetune_epochs > 0:
            model.freeze_backbone(train_config.finetune_blocks)
            full = (train_config.finetune_epochs, train_config.finetune_lr, "finetune")
    if full is not None:
        epochs, lr, stage = full
        hist, rate = _train_full(
            model,
            faces,
            train_idx,
            val_idx,
            model_config,
            train_config,
            criterion,
            device,
            epochs,
            lr,
            stage,
            log,
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


def _fold_predictions(
    faces: Faces, fold: int, fitted: FitResult, val_idx, test_idx, mc: ModelConfig, tc: TrainConfig
) -> FoldPredictions:
    device = resolve_device(tc.device)
    test_prob = probabilities(predict_logits(fitted.model, faces, test_idx, mc, device, amp=tc.amp), mc.task)
    thresholds = None
    if mc.task == "au":  # per-AU decision thresholds chosen on validation data, never on the test fold
        val_prob = probabilities(
            predict_logits(fitted.model, faces, val_idx, mc, device, amp=tc.amp), mc.task
        )
        thresholds = choose_thresholds(faces.targets[val_idx].astype(bool), val_prob)
        y_true = faces.targets[test_idx].astype(bool)
    else:
        y_true = faces.targets[test_idx]
    return FoldPredictions(
        fold=fold,
        labels=list(faces.labels),
        y_true=y_true,
        prob=test_prob,
        thresholds=thresholds,
        groups=sorted(set(faces.groups[test_idx].tolist())),
    )


def cross_validate(
    faces: Faces, model_config: ModelConfig, train_config: TrainConfig, k: int = 3, log: Progress = print
) -> list[FoldRun]:
    """Subject-exclusive k-fold: each fold's model never sees the people it is tested on;
    its validation data (early stopping, thresholds) come from its training people."""
    runs = []
    for fold, (train_all, test_idx) in enumerate(group_kfold(faces.groups, k)):
        train_idx, val_idx, how = validation_split(faces.groups, train_all, seed=train_config.seed)
        log(f"fold {fold + 1}/{k}: {len(train_idx)} train, {len(val_idx)} val ({how}), {len(test_idx)} test")
        fitted = fit(faces, train_idx, val_idx, model_config, train_config, log)
        fitted.validation = how
        preds = _fold_predictions(faces, fold, fitted, val_idx, test_idx, model_config, train_config)
        runs.append(FoldRun(preds, fitted, val_idx, test_idx))
    return runs


def split_indices(faces: Faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dataset version's own train / val / test split (FER-2013's Usage column)."""
    parts = tuple(np.flatnonzero(faces.splits == s) for s in ("train", "val", "test"))
    for name, part in zip(("train", "val", "test"), parts):
        if len(part) == 0:
            raise ValueError(f"the dataset version has no {name} rows for the {faces.task} task")
    return parts


def holdout(
    faces: Faces, model_config: ModelConfig, train_config: TrainConfig, log: Progress = print
) -> list[FoldRun]:
    """Train on the version's train split, early-stop on val, test on test (FER-2013's protocol)."""
    train_idx, val_idx, test_idx = split_indices(faces)
    log(f"holdout: {len(train_idx)} train, {len(val_idx)} val, {len(test_idx)} test")
    fitted = fit(faces, train_idx, val_idx, model_config, train_config, log)
    fitted.validation = "the version's val split"
    return [
        FoldRun(
            _fold_predictions(faces, 0, fitted, val_idx, test_idx, model_config, train_config),
            fitted,
            val_idx,
            test_idx,
        )
    ]
