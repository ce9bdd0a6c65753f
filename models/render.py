"""Reports rendered from evaluation rows: a small document model written as Markdown and HTML,
the PNG plots (grouped bars, precision-recall curves, confusion matrix) and the sections every
report shares (header, folds, published baselines) or that a kind of model needs (multi-label:
per-label F1 / thresholds / PR curves; multi-class: accuracy, per-class precision, confusion).
A report folder is written beside its target and swapped in whole (`warehouse.atomic.publish_dir`),
so a reader never sees half a report and a re-run replaces the old one."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.evaluation import Rows
from models.metrics import pr_curve
from models.predictions import FoldPredictions
from warehouse.atomic import publish_dir

# Headless everywhere (Dagster workers, CI). Plots use Figure objects, never pyplot's global state,
# so reports can be rendered from several threads at once.
matplotlib.use("Agg")

NOT_COMPARABLE = "Published figures on other data (DISFA / FER-2013), not comparable with this run."
SAME_DATA = (
    "Published figures on the same data set as this run; protocols (folds, label subset, "
    "preprocessing) may still differ."
)
# (method, published figure in %, note)
Baseline = tuple[str, float, str]
# file name -> a function that draws the plot into the given path
Plots = dict[str, Callable[[Path], Any]]


def fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"  # NaN: undefined (e.g. no positives in any fold)


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


# ---------------------------------------------------------------------------------------------
# document blocks rendered to Markdown and to HTML


@dataclass
class Doc:
    """Blocks (headings, paragraphs, lists, tables, images) rendered to Markdown or HTML."""

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


def save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_bars(
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
    return save_figure(fig, path)


def plot_pr_curves(path: Path, labels: list[str], y: np.ndarray, p: np.ndarray, aps: list[float]) -> Path:
    ncols = min(4, max(1, len(labels)))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows))
    for j, label in enumerate(labels):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        precision, recall = pr_curve(y[:, j], p[:, j])
        ax.step(recall, precision, where="post")
        ax.axhline(float(y[:, j].mean()) if y.shape[0] else 0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{label}  AP {fmt(aps[j])}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(path: Path, labels: list[str], counts: np.ndarray) -> Path:
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
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# writing a report folder


def write_folder(out_dir: Path, doc: Doc, title: str, plots: Plots) -> dict[str, Any]:
    """Render `doc` (report.md, report.html) and the plots {file name: fn(path)} into a temp folder
    beside `out_dir`, then publish it there whole. Returns {"markdown", "html", "plots": [...]}.

    Raises:
        OSError: the folder cannot be written (nothing is published then).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the report is meant to be read
        for name, fn in plots.items():
            fn(tmp / name)
        (tmp / "report.md").write_text(doc.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(doc.html(title), encoding="utf-8")
        publish_dir(tmp, out_dir)
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


def header(
    doc: Doc,
    title: str,
    task: str,
    dataset_version: str,
    model: dict,
    headline: Sequence[tuple[str, str]] = (),
) -> None:
    """Title, task, dataset version, backbone weights, time; the headline block (the figure that
    decides, first: `headline` rows of name and value); then the model summary as given."""
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
    if headline:
        doc.h(2, "Headline")
        doc.table(["", "Value"], [[name, value] for name, value in headline])
    if model:
        doc.h(2, "Model")
        doc.table(
            ["Setting", "Value"],
            [[k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in model.items()],
        )


def collapsed(items: Sequence[object], shown: int = 8) -> str:
    """A long list as its first `shown` items and the count."""
    head = ", ".join(map(str, items[:shown]))
    return head + (f", ... ({len(items)} in all)" if len(items) > shown else "")


def folds_section(doc: Doc, folds: Sequence[FoldPredictions], r: Rows) -> None:
    """One row per fold: its samples and held-out groups."""
    doc.h(2, "Folds (held-out identities)")
    rows = []
    for f in folds:
        rows.append([str(f.fold), str(int(r("n_samples", fold=f.fold))), collapsed(f.groups) or "-"])
    doc.table(["Fold", "Samples", "Held-out groups"], rows)


def per_fold_table(doc: Doc, r: Rows, metric: str, labels: list[str], first: str) -> None:
    """`metric` per label and fold, with mean ± std."""
    head = [first] + [f"fold {k}" for k in r.folds] + ["mean ± std"]
    doc.table(
        head, [[lab] + [fmt(r(metric, lab, k)) for k in r.folds] + [r.pm(metric, lab)] for lab in labels]
    )


def compact_section(doc: Doc, level: int, notes: list[str], table: list[dict[str, Any]]) -> None:
    """Seed 004's compact models beside the fp32 one: the notes (held-out faces, how latency was
    measured, how each variant was made), then size, latency and the task metric per variant."""
    doc.h(level, "Compact models")
    doc.ul(notes)
    doc.table(
        [
            "Variant",
            "File",
            "Size (MB)",
            "ms/face, batch 1",
            "ms/face, batch 64",
            "Metric",
            "Value",
            "Agrees with fp32",
        ],
        [
            [
                r["variant"],
                r["file"],
                f"{r['size_mb']:.2f}",
                f"{r['latency_ms_b1']:.2f}",
                f"{r['latency_ms_b64']:.2f}",
                r["metric"],
                fmt(r["value"]),
                fmt(r["agreement"]),
            ]
            for r in table
        ],
    )


def baselines_section(
    doc: Doc,
    metric_name: str,
    published: Sequence[Baseline],
    this_run: Sequence[tuple[str, float, str]],
    on_published_data: bool,
) -> None:
    """Published figures (in %) beside this run's (`this_run`: (name, value in 0..1, note) rows),
    under a warning when they are on other data."""
    doc.h(2, "Published baselines")
    doc.p(SAME_DATA if on_published_data else NOT_COMPARABLE, bold=True)
    doc.table(
        ["Method", f"{metric_name} (%)", "Note"],
        [[m, f"{v:.1f}", note] for m, v, note in published]
        + [[name, pct(v), note] for name, v, note in this_run],
    )


def multilabel_sections(doc: Doc, folds: Sequence[FoldPredictions], r: Rows, plots: Plots) -> None:
    """Avg.F1, per-label F1 / precision / recall / AP, thresholds per fold, PR curves (AUs)."""
    labels = list(folds[0].labels)
    n = len(r.folds)
    doc.h(2, "Avg.F1")
    per_fold = ", ".join(f"fold {k}: {fmt(r('avg_f1', fold=k))}" for k in r.folds)
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
    undefined = {lab: int(r("folds_without_positives", lab)) for lab in labels}
    doc.p(
        f"Pooled over every fold's held-out faces (each at its own fold's thresholds): Avg.F1 "
        f"{fmt(r('avg_f1_pooled'))}; mean over the folds where an AU has positives: "
        f"{fmt(r('avg_f1_defined'))}."
        + (
            " Folds without positives of an AU (its F1 there is undefined; the per-fold mean above "
            "counts it as 0): " + ", ".join(f"{lab} {n}" for lab, n in undefined.items() if n) + "."
            if any(undefined.values())
            else " Every fold has positives of every AU."
        )
    )
    doc.h(2, "Per-AU summary")
    doc.table(
        [
            "AU",
            "F1 (mean over folds)",
            "F1 pooled",
            "F1 (defined folds)",
            "Precision",
            "Recall",
            "AP (all folds)",
            "Positives",
            "Folds without positives",
        ],
        [
            [
                lab,
                r.pm("f1", lab),
                fmt(r("f1_pooled", lab)),
                fmt(r("f1_defined", lab)),
                r.pm("precision", lab),
                r.pm("recall", lab),
                fmt(r("ap_pooled", lab)),
                str(int(r("support_total", lab))),
                str(undefined[lab]),
            ]
            for lab in labels
        ],
    )
    doc.img("f1_per_au.png", "per-AU F1, mean over folds with std error bars")
    for metric, name in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
        doc.h(3, f"{name} per fold")
        per_fold_table(doc, r, metric, labels, "AU")
    doc.h(3, "Decision thresholds per fold")
    doc.table(
        ["AU"] + [f"fold {k}" for k in r.folds],
        [[lab] + [fmt(r("threshold", lab, k)) for k in r.folds] for lab in labels],
    )
    doc.h(2, "Precision-recall curves (all folds pooled)")
    doc.img("pr_curves.png", "precision-recall curve per AU; dashed line = positive rate")

    means = [r("f1", lab) for lab in labels]
    stds = [r("f1_std", lab) for lab in labels]
    aps = [r("ap_pooled", lab) for lab in labels]
    y_all = np.concatenate([np.asarray(f.y_true).astype(bool) for f in folds])
    p_all = np.concatenate([np.asarray(f.prob, dtype=np.float64) for f in folds])
    plots["f1_per_au.png"] = lambda path: plot_bars(path, labels, {"F1": (means, stds)}, "F1")
    plots["pr_curves.png"] = lambda path: plot_pr_curves(path, labels, y_all, p_all, aps)


def multiclass_sections(doc: Doc, folds: Sequence[FoldPredictions], r: Rows, plots: Plots) -> None:
    """Accuracy, per-class precision (seed 004's Table 1), per-class scores, confusion matrix."""
    labels = list(folds[0].labels)
    doc.h(2, "Accuracy")
    per_fold = ", ".join(f"fold {k}: {fmt(r('accuracy', fold=k))}" for k in r.folds)
    doc.p(f"Accuracy over {len(r.folds)} fold(s): {r.pm('accuracy')} ({per_fold}).", bold=True)
    doc.p("Prediction = the most probable class; zero division counts as 0; ± is the sample std over folds.")
    doc.h(2, "Precision per class (as seed 004's Table 1)")
    rows = [
        [f"fold {k}"] + [fmt(r("precision", lab, k)) for lab in labels] + [fmt(r("mean_precision", fold=k))]
        for k in r.folds
    ]
    rows.append(["mean"] + [fmt(r("precision", lab)) for lab in labels] + [fmt(r("mean_precision"))])
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
    plots["confusion_matrix.png"] = lambda path: plot_confusion(path, labels, counts)
