"""Compact models (seed 004): post-training int8 quantization and knowledge distillation of a trained
AU or emotion model, and their comparison with the fp32 model on the same held-out faces.

    quantize_int8(wh, model_id)                        # models/<task>/<id>/model.int8.onnx
    distill(wh, model_id, DistillationSettings())      # models/<task>/<id>/student.pt, student.onnx
    table = compare_compact(wh, model_id)              # size, latency, metric: fp32, int8, student
    Predictor.load(wh, model_id, variant="int8")       # models.predict: any variant predicts

Files beside the model's own (models.pipeline's layout):
    model.int8.onnx     ONNX Runtime int8 of model.onnx: static quantization (QDQ, per-channel
                        weights, activations calibrated on the version's training faces), dynamic
                        quantization (weights only, activations quantized at run time) as the fallback
    int8.json           how it was quantized (calibration, faces, fallback reason)
    student.pt/.onnx    the distilled student (the teacher's network at alpha 0.25, random init)
    student.json        its settings, network, training history, thresholds (AU) and faces

Held-out faces (what every variant is scored on, the same faces for all): the production model of
models.pipeline is a fold model unless refit; its fold's test groups are faces it never saw, in
training or validation (emotion, holdout protocol: the version's test split; AU, k-fold: the fold's
held-out subjects). A refit model saw every face; the version's test split is used then and the
table says the faces are not held out. Calibration and the student's training use only the other
faces (never the held-out ones).

The comparison is written to <home>/reports/<version>/<model_id>-compact/ (report.md/.html,
compact.parquet), and as compact.json beside the model, from which the model's own report
(reports/<version>/<model_id>/) shows it in a "Compact models" section, now and whenever it is
written again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from models import render
from models.checkpoint import export_onnx, load_checkpoint, save_checkpoint
from models.data import Augment, Faces, iterate_batches, load_faces, validation_split
from models.device import torch_device
from models.networks import ModelConfig, build_model, count_parameters, normalization, normalize
from models.pipeline import COMPACT_TABLE, ModelRun, load_run, write_model_report
from models.predictions import FoldPredictions
from models.train import BestEpoch, predict_logits
from warehouse import Warehouse
from warehouse.atomic import atomic_path, atomic_write_bytes
from warehouse.settings import DEFAULT_DEVICE, Device, Settings
from warehouse.versions import read_manifest

log = logging.getLogger(__name__)
Calibration = Literal["static", "dynamic"]
VARIANTS: tuple[str, ...] = ("fp32", "int8", "student")
INT8_FILE = "model.int8.onnx"
INT8_INFO = "int8.json"
STUDENT_CHECKPOINT = "student.pt"
STUDENT_ONNX = "student.onnx"
STUDENT_INFO = "student.json"
DISTILLABLE = ("mobilenet_v1", "mobilenet_v2")  # the networks with a width multiplier


class DistillationSettings(Settings):
    """Knowledge distillation of a trained model into a thinner copy of its network (seed 004:
    alpha-1 MobileNet teacher -> alpha-0.25 student, softmax temperature 2, 12 epochs)."""

    alpha: float = Field(0.25, gt=0, le=1, description="width multiplier of the student's MobileNet")
    temperature: float = Field(2.0, gt=0, description="softmax (emotion) / sigmoid (AU) temperature")
    epochs: int = Field(12, ge=1, description="training epochs of the student (seed 004: 12)")
    hard_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the loss from the true labels (the teacher's training loss); the rest "
        "is the soft-target loss, x temperature^2 (Hinton et al.); 0: soft targets only",
    )
    lr: float = Field(1e-3, gt=0, description="learning rate (Adam); the student starts from random init")
    batch_size: int = Field(64, ge=2, description="images per training batch")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    patience: int = Field(12, ge=1, description="epochs without a better validation loss before stopping")
    augment: bool = Field(True, description="flip, zoom-out and half-face join on training batches")
    device: Device = DEFAULT_DEVICE
    seed: int = Field(
        0, ge=0, description="seed of initialisation, shuffling, augmentation, validation split"
    )


# ---- the faces ------------------------------------------------------------------------------
@dataclass
class CompactData:
    """The teacher's faces split for compaction: held-out faces (scored), the rest (calibration,
    the student's training and validation)."""

    faces: Faces
    config: ModelConfig
    held_out: np.ndarray
    train: np.ndarray
    val: np.ndarray
    held_out_description: str
    held_out_is_clean: bool  # False for a refit model: it saw the version's test split
    thresholds: np.ndarray | None  # the production model's AU thresholds (its fold's), else None


def compact_data(wh: Warehouse, run: ModelRun, seed: int = 0) -> CompactData:
    """The faces of the model's dataset version, decoded as the model reads them, and the split
    described in the module docstring.

    Raises:
        ValueError: no held-out faces, or too few faces left to calibrate / train on.
    """
    config = ModelConfig.from_dict(run.info["network"])
    settings = run.settings()
    faces = load_faces(
        wh.home, read_manifest(wh, run.dataset_version), settings.task, config.image_size, config.channels
    )
    fold = run.info.get("final", {}).get("from_fold")
    groups = run.held_out_groups()
    thresholds = None
    if groups is not None:
        held = np.flatnonzero(np.isin(faces.groups, groups))
        described = (
            "the version's test split, never seen by the production model"
            if run.info.get("protocol") == "holdout"
            else f"fold {fold}'s held-out groups ({len(groups)}), never seen by the production model "
            "(the fold model it is)"
        )
        clean = True
        thresholds = next((p.thresholds for p in run.folds if p.fold == fold), None)
    else:
        held = np.flatnonzero(faces.splits == "test")
        described = "the version's test split (the model is refit on every face: not held out from it)"
        clean = False
    if len(held) == 0:
        raise ValueError(f"model {run.model_id}: no held-out {faces.task} faces to compare on")
    rest = np.setdiff1d(np.arange(len(faces)), held)
    if len(rest) < 3:
        raise ValueError(f"model {run.model_id}: {len(rest)} faces outside the held-out ones; need >= 3")
    train, val, _ = validation_split(faces.groups, rest, seed=seed)
    return CompactData(faces, config, held, train, val, described, clean, thresholds)


def _normalized(data: CompactData, idx: np.ndarray, config: ModelConfig | None = None) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(data.faces.images[idx]))
    return normalize(x, config or data.config).numpy()


# ---- quantization ---------------------------------------------------------------------------
class FacesReader:
    """A calibration data reader for onnxruntime.quantization.quantize_static (its protocol:
    `get_next` gives one input feed, then None): normalised faces, in batches."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_int8(
    wh: Warehouse,
    model_id: str,
    calibration: Calibration = "static",
    calibration_faces: int = 256,
    method: Literal["minmax", "percentile", "entropy"] = "minmax",
) -> Path:
    """Write model.int8.onnx beside the model's model.onnx (and int8.json, how). "static": QDQ
    int8 with per-channel weights and activation ranges calibrated (MinMax) on up to
    `calibration_faces` of the version's faces outside the held-out ones, spread evenly, ranges by
    `method` (onnxruntime's MinMax, Percentile or Entropy calibrator); should
    static quantization fail, dynamic quantization is written instead (said in int8.json and the
    log). "dynamic": weights only, activations quantized at run time (smaller, but ONNX Runtime's
    ConvInteger is far slower on the CPU than fp32 convolutions: over 10x in the test's model).

    Raises:
        FileNotFoundError: no such model, or its model.onnx is missing.
        ValueError: an unknown calibration; too few faces.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if calibration not in ("static", "dynamic"):
        raise ValueError(f"calibration {calibration!r}: expected static or dynamic")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"calibration method {method!r}: expected one of {list(methods)}")
    run = load_run(wh, model_id)
    if not run.onnx.is_file():
        raise FileNotFoundError(f"model {model_id}: {run.onnx} is missing; train the model again")
    out = run.directory / INT8_FILE
    info: dict[str, Any] = {"requested": calibration, "source": run.onnx.name, "created_at": _now()}
    started = time.perf_counter()
    if calibration == "static":
        data = compact_data(wh, run)
        pool = np.concatenate([data.train, data.val])
        pick = pool[np.linspace(0, len(pool) - 1, min(calibration_faces, len(pool))).round().astype(int)]
        pick = np.unique(pick)
        x = _normalized(data, pick)
        batches = [x[i : i + 32] for i in range(0, len(x), 32)]
        # The output activation (softmax / sigmoid) stays float: quantized, probabilities would come
        # in steps of 1/255 and a softmax would no longer sum to 1.
        graph = onnx.load(str(run.onnx)).graph
        outputs = {o.name for o in graph.output}
        keep_float = [n.name for n in graph.node if outputs & set(n.output)]
        try:
            with atomic_path(out) as tmp:
                quantize_static(
                    str(run.onnx),
                    str(tmp),
                    FacesReader(batches, "input"),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    nodes_to_exclude=keep_float,
                )
            info.update(
                calibration="static",
                method=method,
                calibration_faces=len(pick),
                calibration_from="the version's faces outside the held-out ones",
                float_nodes=keep_float,
            )
        except Exception as exc:  # noqa: BLE001 - any quantizer failure falls back, and says why
            log.warning(f"{model_id}: static quantization failed ({exc}); writing dynamic int8 instead")
            info["fallback_reason"] = f"{type(exc).__name__}: {exc}"
            calibration = "dynamic"
    if calibration == "dynamic":
        with atomic_path(out) as tmp:
            quantize_dynamic(str(run.onnx), str(tmp), weight_type=QuantType.QInt8)
        info["calibration"] = "dynamic"
    info["seconds"] = time.perf_counter() - started
    atomic_write_bytes(run.directory / INT8_INFO, json.dumps(info, indent=1).encode())
    log.info(f"{model_id}: {out.name} ({info['calibration']}) {_mb(out):.2f} MB, fp32 {_mb(run.onnx):.2f} MB")
    return out


# ---- distillation ---------------------------------------------------------------------------
@dataclass
class DistillationResult:
    model_id: str  # the teacher's
    checkpoint: Path
    onnx: Path
    config: ModelConfig
    history: list[dict[str, Any]]
    best_val_loss: float
    seconds: float


def why_no_student(run: ModelRun) -> str | None:
    """Why `distill` cannot make the model a student (its network has no width multiplier), or None."""
    architecture = run.info["network"]["architecture"]
    if architecture in DISTILLABLE:
        return None
    return (
        f"model {run.model_id} is a {architecture}: only {', '.join(DISTILLABLE)} have a width multiplier "
        "to distill into"
    )


def distill(
    wh: Warehouse,
    teacher_model_id: str,
    settings: DistillationSettings | None = None,
) -> DistillationResult:
    """Train the teacher's network at `settings.alpha` (random init) on the teacher's outputs at
    `settings.temperature`, on the faces outside the held-out ones (validation: a group-exclusive
    share of them; the best epoch by validation loss is kept), and save it beside the teacher:
    student.pt, student.onnx, student.json (AU thresholds chosen on the validation faces, as
    training does).

    Raises:
        FileNotFoundError: no such model.
        ValueError: the teacher is not a MobileNet (no width multiplier); too few faces.
        ConfigError: the device is not on this machine.
    """
    settings = settings or DistillationSettings()
    run = load_run(wh, teacher_model_id)
    started = time.perf_counter()
    teacher_settings = run.settings()
    task = teacher_settings.task
    refusal = why_no_student(run)
    if refusal:
        raise ValueError(refusal)
    data = compact_data(wh, run, seed=settings.seed)
    device = torch_device(settings.device)
    torch.manual_seed(settings.seed)
    teacher, _, _ = load_checkpoint(run.checkpoint, device=str(device))
    teacher.eval()
    config = dataclasses.replace(data.config, alpha=settings.alpha, weights="")
    student = build_model(config).to(device)
    faces = data.faces
    criterion = teacher_settings.criterion(faces.targets[data.train], device)
    hard = settings.hard_weight

    def loss_of(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        loss = (1 - hard) * task.soft_target_loss(s, t, settings.temperature)
        return loss + hard * criterion(s, y) if hard > 0 else loss

    stats = normalization(config)
    augment = Augment(mean=stats and stats[0], std=stats and stats[1]) if settings.augment else None
    opt = torch.optim.Adam(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    keeper, history = BestEpoch(settings.patience), []
    log.info(
        f"distilling {teacher_model_id} ({count_parameters(teacher):,} parameters) into alpha "
        f"{settings.alpha} ({count_parameters(student):,}): {len(data.train)} train, {len(data.val)} val faces"
    )
    for epoch in range(settings.epochs):
        student.train()
        total, t0 = 0.0, time.perf_counter()
        for x, y in iterate_batches(
            faces, data.train, settings.batch_size, device, True, settings.seed + epoch
        ):
            if len(x) < 2:  # BatchNorm needs two samples
                continue
            x = normalize(x, config)
            if augment is not None:
                x = augment(x, y, gen)
            loss = loss_of(x, y, student(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        student.eval()
        val_total = 0.0
        with torch.no_grad():
            for x, y in iterate_batches(faces, data.val, 128, device):
                x = normalize(x, config)
                val_total += float(loss_of(x, y, student(x))) * len(x)
        val = val_total / len(data.val)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / len(data.train),
                "val_loss": val,
                "seconds": time.perf_counter() - t0,
            }
        )
        log.info(
            f"student epoch {epoch + 1}/{settings.epochs}: train loss {history[-1]['train_loss']:.4f}, "
            f"val loss {val:.4f}, {history[-1]['seconds']:.1f}s"
        )
        if keeper.should_stop(val, student):
            break
    keeper.restore(student)
    student.eval()
    val_prob = lambda: task.probabilities(predict_logits(student, faces, data.val, config, device)).numpy()  # noqa: E731
    thresholds = task.thresholds(faces.targets[data.val], val_prob)
    info = {
        "teacher": teacher_model_id,
        "settings": settings.model_dump(mode="json"),
        "network": config.to_dict(),
        "parameters": count_parameters(student),
        "teacher_parameters": count_parameters(teacher),
        "thresholds": None if thresholds is None else np.asarray(thresholds, dtype=float).tolist(),
        "train_faces": len(data.train),
        "val_faces": len(data.val),
        "held_out": data.held_out_description,
        "history": history,
        "best_val_loss": keeper.best,
        "seconds": time.perf_counter() - started,
        "created_at": _now(),
    }
    checkpoint = save_checkpoint(run.directory / STUDENT_CHECKPOINT, student, config, {"distillation": info})
    onnx = export_onnx(student.cpu(), config, run.directory / STUDENT_ONNX)
    atomic_write_bytes(run.directory / STUDENT_INFO, json.dumps(info, indent=1).encode())
    log.info(f"{teacher_model_id}: student {onnx.name} {_mb(onnx):.2f} MB, best val loss {keeper.best:.4f}")
    return DistillationResult(
        teacher_model_id, checkpoint, onnx, config, history, keeper.best, info["seconds"]
    )


# ---- the comparison -------------------------------------------------------------------------
def variant_files(run: ModelRun, variant: str) -> tuple[Path, Path | None, ModelConfig]:
    """(ONNX file, torch checkpoint or None, network config) of a variant of a trained model.

    Raises:
        ValueError: an unknown variant.
        FileNotFoundError: the variant has not been made (quantize_int8 / distill first).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {list(VARIANTS)}")
    config = ModelConfig.from_dict(run.info["network"])
    if variant == "fp32":
        return run.onnx, run.checkpoint, config
    if variant == "int8":
        path = run.directory / INT8_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"model {run.model_id} has no int8 file: run `ferlab export {run.model_id} --int8`"
            )
        return path, None, config
    info_path = run.directory / STUDENT_INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"model {run.model_id} has no distilled student: run `ferlab distill {run.model_id}`"
        )
    info = json.loads(info_path.read_text())
    return (
        run.directory / STUDENT_ONNX,
        run.directory / STUDENT_CHECKPOINT,
        ModelConfig.from_dict(info["network"]),
    )


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _latency_ms(session, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median milliseconds per face over `repeats` runs of one batch of `batch` faces (after a warm-up)."""
    name = session.get_inputs()[0].name
    reps = -(-batch // len(x))
    b = np.ascontiguousarray(np.concatenate([x] * reps)[:batch], dtype=np.float32)
    session.run(None, {name: b})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: b})
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / batch


def _metric(task, data: CompactData, prob: np.ndarray, thresholds) -> tuple[str, float]:
    name = task.fold_metric
    fold = FoldPredictions(
        fold=0,
        labels=list(data.faces.labels),
        y_true=task.true_labels(data.faces.targets[data.held_out]),
        prob=prob,
        thresholds=None if thresholds is None else np.asarray(thresholds, dtype=np.float64),
        groups=sorted(set(data.faces.groups[data.held_out].tolist())),
    )
    value = next(r["value"] for r in task.fold_rows(fold) if r["metric"] == name and r["label"] == "")
    return name, float(value)


@dataclass
class Comparison:
    model_id: str
    rows: list[
        dict[str, Any]
    ]  # one per variant: variant, file, size_mb, latency_ms_b1, latency_ms_b64, metric, value
    held_out: str
    n_faces: int
    directory: Path
    report: dict[str, Any]

    def row(self, variant: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["variant"] == variant)


def compare_compact(
    wh: Warehouse,
    model_id: str,
    variants: tuple[str, ...] | None = None,
    repeats: int = 20,
    threads: int | None = 1,
) -> Comparison:
    """Size (MB), CPU latency per face at batch 1 and 64 (ONNX Runtime, median of `repeats` runs)
    on `threads` threads (1: a per-core figure, steady on a shared machine; None: ONNX Runtime's
    default) and the task metric (Avg.F1 at the thresholds of the model's validation data / accuracy) of
    each variant on the same held-out faces; written as a table to
    <home>/reports/<version>/<model_id>-compact/. `variants` unset: every one that exists.

    Raises:
        FileNotFoundError: no such model, or a variant asked for that has not been made.
    """
    run = load_run(wh, model_id)
    data = compact_data(wh, run)
    task = run.settings().task
    if variants is None:
        variants = tuple(v for v in VARIANTS if has_variant(run, v))
    rows = []
    for variant in variants:
        onnx, _, config = variant_files(run, variant)
        session = _session(onnx, threads)
        x = _normalized(data, data.held_out, config)
        name = session.get_inputs()[0].name
        prob = np.concatenate([session.run(None, {name: x[i : i + 64]})[0] for i in range(0, len(x), 64)])
        if variant == "student":
            info = json.loads((run.directory / STUDENT_INFO).read_text())
            thresholds = info.get("thresholds")
        else:
            thresholds = data.thresholds
        metric, value = _metric(task, data, prob, thresholds)
        row = {
            "variant": variant,
            "file": onnx.name,
            "size_mb": _mb(onnx),
            "latency_ms_b1": _latency_ms(session, x, 1, repeats),
            "latency_ms_b64": _latency_ms(session, x, 64, max(3, repeats // 4)),
            "metric": metric,
            "value": value,
            "agreement": float("nan"),
        }
        rows.append((row, prob))
    fp32 = next((p for r, p in rows if r["variant"] == "fp32"), None)
    for r, p in rows:  # how often a variant decides as the fp32 model does (argmax / each AU at 0.5)
        if fp32 is not None:
            same = task.decisions(p) == task.decisions(fp32)
            r["agreement"] = float(np.mean(same))
    table = [r for r, _ in rows]
    for r in table:
        log.info(
            f"{model_id} {r['variant']:>7}: {r['size_mb']:.2f} MB, {r['latency_ms_b1']:.2f} ms/face at batch 1, "
            f"{r['latency_ms_b64']:.2f} ms/face at batch 64, {r['metric']} {r['value']:.3f}, "
            f"agrees with fp32 {r['agreement']:.3f}"
        )
    out = wh.home / "reports" / run.dataset_version / f"{model_id}-compact"
    notes = _notes(run, data, threads)
    report = render.write_folder(
        out,
        _report(run, table, notes),
        f"Compact models of {model_id}",
        {"compact.parquet": lambda p: pq.write_table(pa.Table.from_pylist(table), p)},
    )
    # the model's own report shows the table too; it is read from here whenever that report is written
    atomic_write_bytes(
        run.directory / COMPACT_TABLE,
        json.dumps({"notes": notes, "rows": table, "generated_at": _now()}, indent=2).encode(),
    )
    write_model_report(wh, run)
    return Comparison(model_id, table, data.held_out_description, len(data.held_out), out, report)


def has_variant(run: ModelRun, variant: str) -> bool:
    """Whether the variant's files of the model have been made."""
    try:
        onnx, _, _ = variant_files(run, variant)
    except FileNotFoundError:
        return False
    return onnx.is_file()


def _notes(run: ModelRun, data: CompactData, threads: int | None) -> list[str]:
    lines = [
        f"Held-out faces: {len(data.held_out)}, {data.held_out_description}",
        "Latency: ONNX Runtime on the CPU"
        + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else ", its default threads")
        + ", median per face of repeated runs of one batch",
    ]
    int8_info = run.directory / INT8_INFO
    if int8_info.is_file():
        q = json.loads(int8_info.read_text())
        how = q["calibration"] + (
            f" ({q['calibration_faces']} calibration faces)" if "calibration_faces" in q else ""
        )
        if "fallback_reason" in q:
            how += f"; static failed: {q['fallback_reason']}"
        lines.append(f"int8: {how}")
    student_info = run.directory / STUDENT_INFO
    if student_info.is_file():
        s = json.loads(student_info.read_text())
        st = s["settings"]
        lines.append(
            f"student: alpha {st['alpha']}, temperature {st['temperature']}, {len(s['history'])} of "
            f"{st['epochs']} epochs, {s['parameters']:,} parameters (teacher {s['teacher_parameters']:,})"
        )
    return lines


def _report(run: ModelRun, table: list[dict[str, Any]], notes: list[str]) -> render.Doc:
    doc = render.Doc(
        [],
        kind="compact models",
        summary="; ".join(
            f"{r['variant']} {r['size_mb']:.1f} MB, {r['metric']} {render.pct(r['value'])} %" for r in table
        ),
    )
    doc.h(1, f"Compact models of {run.model_id}")
    doc.ul(
        [
            f"Dataset version: {run.dataset_version}",
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            render.SCALE_NOTE,
        ]
    )
    render.compact_section(doc, 2, notes, table)
    return doc


def _mb(path: Path) -> float:
    return Path(path).stat().st_size / 1e6


def _now() -> str:
    return datetime.now(UTC).isoformat()
