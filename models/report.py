"""Evaluation reports per dataset version and model: eval_metrics rows, Markdown + HTML + PNG plots.

`evaluate_folds` turns per-fold predictions into flat rows (the `eval_metrics` table); the reports
are rendered *from those rows only*, so every figure in a report is one the table holds too.
Reports are written into a temp folder beside the target and swapped in at the end, so a reader
never sees half a report (and a re-run replaces the old one whole).
"""

from __future__ import annotations

import ctypes
import html
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.metrics import (
    average_precision,
    classification_scores,
    confusion_matrix,
    multilabel_scores,
    pr_curve,
)

# Headless everywhere (Dagster workers, CI). Plots use Figure objects, never pyplot's global state,
# so reports can be rendered from several threads at once.
matplotlib.use("Agg")

TASKS = ("au", "emotion")
NOT_COMPARABLE = "Published figures on other data (DISFA / FER-2013), not comparable with this run."
SAME_DATA = (
    "Published figures on the same data set as this run; protocols (folds, label subset, "
    "preprocessing) may still differ."
)

# task -> (method, published figure in %, note). Figures as the seeds / SEEDS.md report them.
PUBLISHED_BASELINES: dict[str, list[tuple[str, float, str]]] = {
    "au": [
        ("EAC-Net", 48.5, "DISFA Avg.F1 (8 AUs), as cited by seeds 000/001"),
        ("JAA-Net", 56.0, "DISFA Avg.F1 (8 AUs), as cited by seeds 000/001 ('about 56')"),
        ("Seeds' transfer-learning CNNs (lowest)", 60.8, "DISFA Avg.F1, seeds 000/001/002: range 60.8-64.7"),
        (
            "Seeds' transfer-learning CNNs (highest)",
            64.7,
            "DISFA Avg.F1, seeds 000/001/002: DenseNet-201 / MobileNet-v1 best",
        ),
        ("ME-GraphAU", 63.1, "DISFA Avg.F1, published state of the art"),
        ("AU-Net", 66.1, "DISFA Avg.F1, published state of the art"),
    ],
    "emotion": [
        (
            "Seed-003 CNN (lowest class)",
            76.0,
            "FER-2013 test, per-class accuracy (not overall); disgust hardest",
        ),
        ("Seed-003 CNN (highest class)", 100.0, "FER-2013 test, per-class accuracy (not overall)"),
        ("DenseNet-121", 73.2, "FER-2013 test accuracy"),
        ("VGG", 73.3, "FER-2013 test accuracy"),
        ("ResMaskingNet", 74.1, "FER-2013 test accuracy"),
        ("7-model ensemble", 76.8, "FER-2013 test accuracy"),
    ],
}


@dataclass
class FoldPredictions:
    """What training/evaluation hands to the report, one per fold (held-out identities)."""

    fold: int  # 0..k-1 (or 0 for a single train/test split)
    labels: list[str]  # e.g. ["AU1", "AU2", ...] or the emotion names
    y_true: np.ndarray  # au: (N, K) bool ; emotion: (N,) int class index
    prob: np.ndarray  # au: (N, K) sigmoid probs ; emotion: (N, C) softmax probs
    thresholds: np.ndarray | None  # au: (K,) chosen on validation data ; emotion: None
    groups: list[str]  # held-out subjects / identities of this fold


# ---------------------------------------------------------------------------------------------
# rows


def _row(fold: int | None, metric: str, label: str, value: float) -> dict:
    return {"fold": fold, "metric": metric, "label": label, "value": float(value)}


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation over folds (ddof=1); 0 for a single fold."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _au_fold_rows(f: FoldPredictions) -> list[dict]:
    y = np.asarray(f.y_true).astype(bool)
    p = np.asarray(f.prob, dtype=np.float64)
    k = len(f.labels)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != k:
        raise ValueError(f"fold {f.fold}: y_true {y.shape}, prob {p.shape}, {k} labels")
    # No validation thresholds: the plain 0.5 cut (the report says which was used).
    t = np.full(k, 0.5) if f.thresholds is None else np.asarray(f.thresholds, dtype=np.float64)
    s = multilabel_scores(y, p, t)
    rows = []
    for j, label in enumerate(f.labels):
        for metric in ("f1", "precision", "recall", "support"):
            rows.append(_row(f.fold, metric, label, s[metric][j]))
        rows.append(_row(f.fold, "threshold", label, t[j]))
        rows.append(_row(f.fold, "ap", label, average_precision(y[:, j], p[:, j])))
    rows.append(_row(f.fold, "avg_f1", "", float(np.mean(s["f1"])) if k else 0.0))
    rows.append(_row(f.fold, "n_samples", "", y.shape[0]))
    return rows


def _emotion_fold_rows(f: FoldPredictions) -> list[dict]:
    y = np.asarray(f.y_true, dtype=np.int64).ravel()
    p = np.asarray(f.prob, dtype=np.float64)
    c = len(f.labels)
    if p.ndim != 2 or p.shape != (y.size, c):
        raise ValueError(f"fold {f.fold}: y_true {y.shape}, prob {p.shape}, {c} labels")
    pred = p.argmax(axis=1)
    s = classification_scores(y, pred, c)
    cm = confusion_matrix(y, pred, c)
    rows = [
        _row(f.fold, "accuracy", "", s["accuracy"]),
        # seed 004's Table 1 "Average" column: the unweighted mean of per-class precision
        _row(f.fold, "mean_precision", "", float(np.mean(s["precision"]))),
        _row(f.fold, "macro_f1", "", float(np.mean(s["f1"]))),
        _row(f.fold, "n_samples", "", y.size),
    ]
    for j, label in enumerate(f.labels):
        for metric in ("precision", "recall", "f1", "support"):
            rows.append(_row(f.fold, metric, label, s[metric][j]))
    for a, la in enumerate(f.labels):
        for b, lb in enumerate(f.labels):
            rows.append(_row(f.fold, "confusion", f"{la}->{lb}", cm[a, b]))
    return rows


def evaluate_folds(task: str, folds: list[FoldPredictions]) -> list[dict]:
    """eval_metrics rows {"fold", "metric", "label", "value"} for every fold, then fold=None rows.

    Per fold, au: per label f1 / precision / recall (at the fold's validation thresholds, 0.5
    where none), support (positives), threshold, ap (average precision); overall avg_f1 (mean F1
    over labels, the seeds' Avg.F1) and n_samples. emotion (argmax prediction): accuracy,
    mean_precision, macro_f1, n_samples; per class precision / recall / f1 / support; confusion
    counts labelled "true->pred".
    fold=None: X = mean over folds and X_std = sample std over folds of every per-fold score;
    sums are named *_total (support_total, n_samples_total, confusion_total); au also ap_pooled
    (average precision over all folds' predictions together) and n_folds.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not folds:
        raise ValueError("no folds")
    labels = list(folds[0].labels)
    if any(list(f.labels) != labels for f in folds):
        raise ValueError("all folds must have the same labels in the same order")
    per_fold = [_au_fold_rows(f) if task == "au" else _emotion_fold_rows(f) for f in folds]
    rows = [r for rs in per_fold for r in rs]

    # mean +- std over folds of every per-fold score, sums for counts
    by_key: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by_key.setdefault((r["metric"], r["label"]), []).append(r["value"])
    summed = {"support", "n_samples", "confusion"}
    for (metric, label), values in by_key.items():
        if metric in summed:
            rows.append(_row(None, f"{metric}_total", label, float(np.sum(values))))
        elif metric != "threshold":  # thresholds are per-fold settings, not scores
            rows.append(_row(None, metric, label, float(np.mean(values))))
            rows.append(_row(None, f"{metric}_std", label, _std(values)))
    rows.append(_row(None, "n_folds", "", len(folds)))
    if task == "au":
        y_all = np.concatenate([np.asarray(f.y_true).astype(bool) for f in folds])
        p_all = np.concatenate([np.asarray(f.prob, dtype=np.float64) for f in folds])
        for j, label in enumerate(labels):
            rows.append(_row(None, "ap_pooled", label, average_precision(y_all[:, j], p_all[:, j])))
    return rows


class _Rows:
    """Lookup over evaluate_folds rows: the only source of numbers for the report."""

    def __init__(self, rows: list[dict]) -> None:
        self._v = {(r["fold"], r["metric"], r["label"]): r["value"] for r in rows}
        self.folds = sorted({r["fold"] for r in rows if r["fold"] is not None})

    def __call__(self, metric: str, label: str = "", fold: int | None = None) -> float:
        return self._v[(fold, metric, label)]

    def pm(self, metric: str, label: str = "") -> str:
        return f"{_f(self(metric, label))} ± {_f(self(metric + '_std', label))}"


def _f(v: float) -> str:
    return f"{v:.3f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


# ---------------------------------------------------------------------------------------------
# document blocks rendered to Markdown and to HTML


@dataclass
class _Doc:
    blocks: list[tuple]

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str, bold: bool = False) -> None:
        self.blocks.append(("p", text, bold))

    def ul(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, name: str, alt: str) -> None:
        self.blocks.append(("img", name, alt))

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"{'#' * b[1]} {b[2]}")
            elif b[0] == "p":
                out.append(f"**{b[1]}**" if b[2] else b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {item}" for item in b[1]))
            elif b[0] == "table":
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                lines = ["| " + " | ".join(cell(c) for c in b[1]) + " |", "|" + "---|" * len(b[1])]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
            "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}"
            "img{max-width:100%}.warn{color:#a40}</style>",
            "</head><body>",
        ]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f'<p class="warn"><strong>{e(b[1])}</strong></p>' if b[2] else f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
        out.append("</body></html>")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# plots


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _plot_bars(
    path: Path, labels: list[str], series: dict[str, tuple[list[float], list[float]]], ylabel: str
) -> Path:
    """Grouped bars: series name -> (means, stds) per label, std as error bars."""
    fig = Figure(figsize=(max(6.0, 0.7 * len(labels) * max(1, len(series)) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, (means, stds)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 12 else 0)
    ax.set_ylim(0, 1.15 if len(series) > 1 else 1.0)  # headroom for the legend row
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="upper right", ncol=len(series))
    fig.tight_layout()
    return _save(fig, path)


def _plot_pr_curves(path: Path, labels: list[str], y: np.ndarray, p: np.ndarray, aps: list[float]) -> Path:
    ncols = min(4, max(1, len(labels)))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows))
    for j, label in enumerate(labels):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        precision, recall = pr_curve(y[:, j], p[:, j])
        ax.step(recall, precision, where="post")
        ax.axhline(float(y[:, j].mean()) if y.shape[0] else 0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{label}  AP {_f(aps[j])}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_confusion(path: Path, labels: list[str], counts: np.ndarray) -> Path:
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    fig = Figure(figsize=(1.0 * len(labels) + 2.5, 0.9 * len(labels) + 2))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for a in range(len(labels)):
        for b in range(len(labels)):
            colour = "white" if norm[a, b] > 0.5 else "black"
            ax.text(b, a, f"{norm[a, b]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (rows normalised, all folds)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# atomic folder publication


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _publish_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` at `target`, replacing an old one whole."""
    if not target.exists():
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if not target.exists():
                raise
    if _rename_exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old report
        return
    # Fallback (non-Linux, filesystems without RENAME_EXCHANGE): two renames, restoring on failure.
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_folder(out_dir: Path, doc: _Doc, title: str, plots: dict[str, Any]) -> dict[str, Any]:
    """Render `doc` and the plot callables {file name: fn(path)} into a temp folder, then publish."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the report is meant to be read
        for name, fn in plots.items():
            fn(tmp / name)
        (tmp / "report.md").write_text(doc.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(doc.html(title), encoding="utf-8")
        _publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "plots": [out_dir / name for name in plots],
    }


# ---------------------------------------------------------------------------------------------
# report sections


def _weights_source(model: dict) -> str:
    """Where the backbone weights came from, under whichever key the caller used."""
    keys = ("weights source", "backbone weights", "weights")  # preference order
    norm = {str(k).lower().replace("_", " ").strip(): v for k, v in model.items()}
    for key in keys:
        if key in norm and norm[key] is not None:
            return "random init" if norm[key] == "" else str(norm[key])
    return "not stated"


def _header(doc: _Doc, title: str, task: str, dataset_version: str, model: dict) -> None:
    doc.h(1, title)
    weights = _weights_source(model)
    doc.ul(
        [
            f"Task: {task}",
            f"Dataset version: {dataset_version}",
            f"Backbone weights: {weights}",
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        ]
    )
    if model:
        doc.h(2, "Model")
        doc.table(
            ["Setting", "Value"],
            [[k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in model.items()],
        )


def _folds_section(doc: _Doc, folds: list[FoldPredictions], r: _Rows) -> None:
    doc.h(2, "Folds (held-out identities)")
    rows = []
    for f in folds:
        groups = ", ".join(map(str, f.groups[:8])) + (
            f", ... ({len(f.groups)} in all)" if len(f.groups) > 8 else ""
        )
        rows.append([str(f.fold), str(int(r("n_samples", fold=f.fold))), groups or "-"])
    doc.table(["Fold", "Samples", "Held-out groups"], rows)


def _per_fold_table(doc: _Doc, r: _Rows, metric: str, labels: list[str], first: str) -> None:
    header = [first] + [f"fold {k}" for k in r.folds] + ["mean ± std"]
    doc.table(
        header, [[lab] + [_f(r(metric, lab, k)) for k in r.folds] + [r.pm(metric, lab)] for lab in labels]
    )


def _baselines_section(doc: _Doc, task: str, r: _Rows, on_published_data: bool) -> None:
    doc.h(2, "Published baselines")
    doc.p(SAME_DATA if on_published_data else NOT_COMPARABLE, bold=True)
    if task == "au":
        header = ["Method", "Avg.F1 (%)", "Note"]
        this = ["This run", _pct(r("avg_f1")), "mean over folds of this report"]
    else:
        header = ["Method", "Accuracy (%)", "Note"]
        this = ["This run", _pct(r("accuracy")), "mean over folds of this report"]
    doc.table(header, [[m, f"{v:.1f}", note] for m, v, note in PUBLISHED_BASELINES[task]] + [this])


def _au_sections(doc: _Doc, folds: list[FoldPredictions], r: _Rows, plots: dict[str, Any]) -> None:
    labels = list(folds[0].labels)
    n = len(r.folds)
    doc.h(2, "Avg.F1")
    per_fold = ", ".join(f"fold {k}: {_f(r('avg_f1', fold=k))}" for k in r.folds)
    doc.p(
        f"Avg.F1 (mean F1 over {len(labels)} AUs) over {n} fold(s): {r.pm('avg_f1')} ({per_fold}).", bold=True
    )
    thresholds = "chosen per AU on validation data (maximum F1)"
    if any(f.thresholds is None for f in folds):
        thresholds = "0.5 where a fold has no validation thresholds"
    doc.p(
        f"Precision / recall / F1 at the decision thresholds {thresholds}; zero division counts as 0; "
        "± is the sample standard deviation over folds; AP = average precision."
    )
    doc.h(2, "Per-AU summary")
    doc.table(
        ["AU", "F1", "Precision", "Recall", "AP (all folds)", "Positives"],
        [
            [
                lab,
                r.pm("f1", lab),
                r.pm("precision", lab),
                r.pm("recall", lab),
                _f(r("ap_pooled", lab)),
                str(int(r("support_total", lab))),
            ]
            for lab in labels
        ],
    )
    doc.img("f1_per_au.png", "per-AU F1, mean over folds with std error bars")
    for metric, name in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
        doc.h(3, f"{name} per fold")
        _per_fold_table(doc, r, metric, labels, "AU")
    doc.h(3, "Decision thresholds per fold")
    doc.table(
        ["AU"] + [f"fold {k}" for k in r.folds],
        [[lab] + [_f(r("threshold", lab, k)) for k in r.folds] for lab in labels],
    )
    doc.h(2, "Precision-recall curves (all folds pooled)")
    doc.img("pr_curves.png", "precision-recall curve per AU; dashed line = positive rate")

    means = [r("f1", lab) for lab in labels]
    stds = [r("f1_std", lab) for lab in labels]
    aps = [r("ap_pooled", lab) for lab in labels]
    y_all = np.concatenate([np.asarray(f.y_true).astype(bool) for f in folds])
    p_all = np.concatenate([np.asarray(f.prob, dtype=np.float64) for f in folds])
    plots["f1_per_au.png"] = lambda path: _plot_bars(path, labels, {"F1": (means, stds)}, "F1")
    plots["pr_curves.png"] = lambda path: _plot_pr_curves(path, labels, y_all, p_all, aps)


def _emotion_sections(doc: _Doc, folds: list[FoldPredictions], r: _Rows, plots: dict[str, Any]) -> None:
    labels = list(folds[0].labels)
    doc.h(2, "Accuracy")
    per_fold = ", ".join(f"fold {k}: {_f(r('accuracy', fold=k))}" for k in r.folds)
    doc.p(f"Accuracy over {len(r.folds)} fold(s): {r.pm('accuracy')} ({per_fold}).", bold=True)
    doc.p("Prediction = the most probable class; zero division counts as 0; ± is the sample std over folds.")
    doc.h(2, "Precision per class (as seed 004's Table 1)")
    rows = [
        [f"fold {k}"] + [_f(r("precision", lab, k)) for lab in labels] + [_f(r("mean_precision", fold=k))]
        for k in r.folds
    ]
    rows.append(["mean"] + [_f(r("precision", lab)) for lab in labels] + [_f(r("mean_precision"))])
    doc.table(["Fold"] + labels + ["Average"], rows)
    doc.h(2, "Per-class scores")
    doc.table(
        ["Class", "Precision", "Recall", "F1", "Samples"],
        [
            [
                lab,
                r.pm("precision", lab),
                r.pm("recall", lab),
                r.pm("f1", lab),
                str(int(r("support_total", lab))),
            ]
            for lab in labels
        ],
    )
    doc.p(f"Macro F1: {r.pm('macro_f1')}; mean per-class precision: {r.pm('mean_precision')}.")
    doc.h(2, "Confusion matrix (all folds)")
    doc.img("confusion_matrix.png", "confusion matrix, rows normalised")
    counts = np.array([[r("confusion_total", f"{a}->{b}") for b in labels] for a in labels])
    doc.table(
        ["true \\ predicted"] + labels, [[a] + [str(int(v)) for v in row] for a, row in zip(labels, counts)]
    )
    plots["confusion_matrix.png"] = lambda path: _plot_confusion(path, labels, counts)


def write_report(
    out_dir: Path,
    *,
    task: str,
    title: str,
    dataset_version: str,
    model: dict,
    folds: list[FoldPredictions],
    baselines: bool = True,
    on_published_data: bool = False,
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into `out_dir`, replacing it whole.

    `model` is a summary dict (architecture, loss, weights_source, epochs, ...), shown as given.
    `on_published_data` says the run is on DISFA / FER-2013 itself; otherwise the published
    baselines are marked as figures on other data. Returns {"markdown", "html", "plots": [...]}."""
    rows = evaluate_folds(task, folds)
    r = _Rows(rows)
    doc = _Doc([])
    _header(doc, title, task, dataset_version, model)
    plots: dict[str, Any] = {}
    if task == "au":
        _au_sections(doc, folds, r, plots)
    else:
        _emotion_sections(doc, folds, r, plots)
    _folds_section(doc, folds, r)
    if baselines:
        _baselines_section(doc, task, r, on_published_data)
    return _write_folder(Path(out_dir), doc, title, plots)


def compare_losses_report(
    out_dir: Path,
    *,
    dataset_version: str,
    results: dict[str, list[FoldPredictions]],
    on_published_data: bool = False,
) -> dict[str, Path]:
    """Seed 000's experiment side by side: per loss, per-AU F1 mean ± std over folds and Avg.F1.

    `results` maps a loss name ("bce", "lsep", "pr") to its AU folds; all must share the labels
    (and should share the folds: the report says when the held-out groups differ)."""
    if not results:
        raise ValueError("no results")
    losses = list(results)
    rs = {name: _Rows(evaluate_folds("au", folds)) for name, folds in results.items()}
    labels = list(next(iter(results.values()))[0].labels)
    if any(list(folds[0].labels) != labels for folds in results.values()):
        raise ValueError("all losses must be evaluated on the same labels")
    title = "Loss comparison: " + " vs ".join(losses)
    doc = _Doc([])
    doc.h(1, title)
    doc.ul(
        [
            f"Dataset version: {dataset_version}",
            "Task: au (seed 000: BCE, LSEP and the precision-recall loss on the same folds)",
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        ]
    )
    splits = {
        name: [sorted(map(str, f.groups)) for f in sorted(folds, key=lambda f: f.fold)]
        for name, folds in results.items()
    }
    if len({json.dumps(s) for s in splits.values()}) > 1:
        doc.p("Warning: the losses were not evaluated on the same held-out groups.", bold=True)
    doc.h(2, "Avg.F1 per loss")
    fold_ids = sorted({k for r in rs.values() for k in r.folds})
    doc.table(
        ["Loss"] + [f"fold {k}" for k in fold_ids] + ["mean ± std"],
        [
            [name]
            + [_f(rs[name]("avg_f1", fold=k)) if k in rs[name].folds else "-" for k in fold_ids]
            + [rs[name].pm("avg_f1")]
            for name in losses
        ],
    )
    doc.h(2, "Per-AU F1 (mean ± std over folds)")
    doc.table(
        ["AU"] + losses,
        [[lab] + [rs[name].pm("f1", lab) for name in losses] for lab in labels]
        + [["Avg.F1"] + [rs[name].pm("avg_f1") for name in losses]],
    )
    doc.img("f1_by_loss.png", "per-AU F1 per loss, mean over folds with std error bars")
    doc.h(2, "Per-AU average precision (all folds pooled)")
    doc.table(
        ["AU"] + losses, [[lab] + [_f(rs[name]("ap_pooled", lab)) for name in losses] for lab in labels]
    )
    doc.h(2, "Published baselines")
    doc.p(SAME_DATA if on_published_data else NOT_COMPARABLE, bold=True)
    doc.table(
        ["Method", "Avg.F1 (%)", "Note"],
        [[m, f"{v:.1f}", note] for m, v, note in PUBLISHED_BASELINES["au"]]
        + [[f"This run, {name}", _pct(rs[name]("avg_f1")), "mean over folds"] for name in losses],
    )
    series = {
        name: ([rs[name]("f1", lab) for lab in labels], [rs[name]("f1_std", lab) for lab in labels])
        for name in losses
    }
    plots = {"f1_by_loss.png": lambda path: _plot_bars(path, labels, series, "F1")}
    return _write_folder(Path(out_dir), doc, title, plots)
