"""Evaluation reports per dataset version and model: the task's metric rows (the `eval_metrics`
table) and the Markdown + HTML + PNG report rendered from them, plus seed 000's loss comparison.
Rows come from `models.evaluation`, rendering from `models.render`, what differs between AU and
emotion models from the task (`models.tasks`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models import render
from models.evaluation import Row, Rows, check_folds, summary_rows
from models.predictions import FoldPredictions
from models.tasks import Task, get_task


def evaluate_folds(task: str | Task, folds: Sequence[FoldPredictions]) -> list[Row]:
    """eval_metrics rows {"fold", "metric", "label", "value"} for every fold, then fold=None rows.

    Per fold, au: per label f1 / precision / recall (at the fold's validation thresholds, 0.5
    where none), support (positives), threshold, ap (average precision); overall avg_f1 (mean F1
    over labels, the seeds' Avg.F1) and n_samples. emotion (argmax prediction): accuracy,
    mean_precision, macro_f1, n_samples; per class precision / recall / f1 / support; confusion
    counts labelled "true->pred".
    fold=None: X = mean over folds and X_std = sample std over folds of every per-fold score;
    sums are named *_total (support_total, n_samples_total, confusion_total); au also ap_pooled
    (average precision over all folds' predictions together) and n_folds.

    Raises:
        ValueError: an unknown task (ConfigError), no folds, or folds that disagree on labels or shapes.
    """
    task = get_task(task)
    check_folds(folds)
    rows = [r for f in folds for r in task.fold_rows(f)]
    return rows + summary_rows(rows, len(folds)) + task.pooled_rows(folds)


def write_report(
    out_dir: Path,
    *,
    task: str | Task,
    title: str,
    dataset_version: str,
    model: dict,
    folds: list[FoldPredictions],
    baselines: bool = True,
    on_published_data: bool = False,
    compact: dict[str, Any] | None = None,
    headline: Sequence[tuple[str, str]] = (),
    summary: str = "",
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into `out_dir`, replacing it whole. Every
    score is shown in % (`models.render`'s scale), without a spread where there is one fold.

    `headline`: the block shown first, under the title (name, value; scores in %): the figure
    promotion compares, its trivial baseline, the production model's figure. `summary`: the
    report's line on the version's index page (unset: the headline block, else the headline
    metric).

    `model` is a summary dict (architecture, loss, weights_source, epochs, ...), shown as given.
    `on_published_data` says the run is on DISFA / FER-2013 itself; otherwise the published
    baselines are marked as figures on other data. `compact`: models.compact's table of the
    model's compact variants ({"notes", "rows"}), shown after the model's own results.
    Returns {"markdown", "html", "plots": [...]}.

    Raises:
        ValueError: as `evaluate_folds`.
        OSError: the folder cannot be written.
    """
    task = get_task(task)
    r = Rows(evaluate_folds(task, folds))
    doc = render.Doc([], kind="model", summary=summary)
    render.header(doc, title, task.name, dataset_version, model, headline)
    if not doc.summary:
        doc.summary = f"{task.headline_name} ({task.headline}): {render.pct(r(task.headline))} %"
    plots: render.Plots = {}
    task.report_sections(doc, folds, r, plots)
    render.folds_section(doc, folds, r)
    if baselines:
        render.baselines_section(
            doc,
            task.headline_name,
            task.published_baselines,
            [
                (
                    "This run",
                    r(task.headline),
                    HEADLINE_PROTOCOL.get(task.headline, "mean over folds of this report"),
                )
            ],
            on_published_data,
        )
    if compact:
        render.compact_section(doc, 2, compact["notes"], compact["rows"])
    return render.write_folder(Path(out_dir), doc, title, plots)


HEADLINE_PROTOCOL = {"avg_f1_pooled": "pooled over every fold's held-out faces (this report)"}


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
    return au_side_by_side_report(
        out_dir,
        title="Loss comparison: " + " vs ".join(results),
        about="seed 000: BCE, LSEP and the precision-recall loss on the same folds",
        column="Loss",
        dataset_version=dataset_version,
        results=results,
        on_published_data=on_published_data,
    )


def au_side_by_side_report(
    out_dir: Path,
    *,
    title: str,
    about: str,
    column: str,
    dataset_version: str,
    results: dict[str, list[FoldPredictions]],
    notes: Sequence[str] = (),
    on_published_data: bool = False,
) -> dict[str, Path]:
    """AU models trained differently on the same folds, side by side: Avg.F1 per fold, per-AU F1
    mean ± std over folds, pooled F1 and average precision. `results` maps each arm's name (a
    `column` value: a loss, "gold", ...) to its folds; `notes` are listed under the header.

    Raises:
        ValueError: no results, or arms with different labels.
    """
    if not results:
        raise ValueError("no results")
    arms = list(results)
    au = get_task("au")
    rs = {name: Rows(evaluate_folds(au, folds)) for name, folds in results.items()}
    labels = list(next(iter(results.values()))[0].labels)
    if any(list(folds[0].labels) != labels for folds in results.values()):
        raise ValueError(f"every {column.lower()} must be evaluated on the same labels")
    doc = render.Doc(
        [],  # its kind comes from the folder's name: a loss comparison or an experiment
        summary=f"{au.headline_name} %: "
        + ", ".join(f"{name} {render.spread(rs[name], 'avg_f1')}" for name in arms),
    )
    doc.h(1, title)
    doc.ul(
        [
            f"Dataset version: {dataset_version}",
            f"Task: au ({about})",
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            *notes,
            render.SCALE_NOTE,
        ]
    )
    splits = {
        name: [sorted(map(str, f.groups)) for f in sorted(folds, key=lambda f: f.fold)]
        for name, folds in results.items()
    }
    if len({json.dumps(s) for s in splits.values()}) > 1:
        doc.p(f"Warning: the {column.lower()}s were not evaluated on the same held-out groups.", bold=True)
    doc.h(2, f"Avg.F1 per {column.lower()} (%)")
    fold_ids = sorted({k for r in rs.values() for k in r.folds})
    how = render.over_folds(len(fold_ids))
    several = len(fold_ids) > 1
    doc.table(
        [column] + [f"fold {k} (%)" for k in fold_ids] + ([f"{how} (%)"] if several else []) + ["pooled (%)"],
        [
            [name]
            + [render.pct(rs[name]("avg_f1", fold=k)) if k in rs[name].folds else "-" for k in fold_ids]
            + ([render.spread(rs[name], "avg_f1")] if several else [])
            + [render.pct(rs[name]("avg_f1_pooled"))]
            for name in arms
        ],
    )
    doc.h(2, f"Per-AU F1, % ({how})")
    doc.table(
        ["AU"] + [f"{name} (%)" for name in arms],
        [[lab] + [render.spread(rs[name], "f1", lab) for name in arms] for lab in labels]
        + [["Avg.F1"] + [render.spread(rs[name], "avg_f1") for name in arms]],
    )
    plot = f"f1_by_{column.lower().replace(' ', '_')}.png"
    doc.img(
        plot,
        f"per-AU F1 in % per {column.lower()}" + (", mean over folds with std error bars" if several else ""),
    )
    doc.h(2, "Per-AU F1 and average precision, % (all folds pooled)")
    doc.table(
        ["AU"] + [f"{name} F1 (%)" for name in arms] + [f"{name} AP (%)" for name in arms],
        [
            [lab]
            + [render.pct(rs[name]("f1_pooled", lab)) for name in arms]
            + [render.pct(rs[name]("ap_pooled", lab)) for name in arms]
            for lab in labels
        ],
    )
    render.baselines_section(
        doc,
        au.headline_name,
        au.published_baselines,
        [(f"This run, {name}", rs[name]("avg_f1"), "mean over folds") for name in arms],
        on_published_data,
    )
    series = {
        name: ([rs[name]("f1", lab) for lab in labels], [rs[name]("f1_std", lab) for lab in labels])
        for name in arms
    }
    plots = {plot: lambda path: render.plot_bars(path, labels, series, "F1 (%)", scale=100)}
    return render.write_folder(Path(out_dir), doc, title, plots)
