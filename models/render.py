"""Reports rendered from evaluation rows: a small document model written as Markdown and HTML,
the PNG plots (grouped bars, precision-recall curves, confusion matrix) and the sections every
report shares (header, folds, published baselines) or that a kind of model needs (multi-label:
per-label F1 / thresholds / PR curves; multi-class: accuracy, per-class precision, confusion).
A report folder is written beside its target and swapped in whole (`warehouse.atomic.publish_dir`),
so a reader never sees half a report and a re-run replaces the old one.

One scale per report: every score (F1, precision, recall, AP, accuracy, coverage) is a percentage
(`pct`, as the published baselines are), with "± std" only where there are several folds
(`spread`); decision thresholds stay probabilities (0-1). A table cell is never a raw Python
list or dict (`plain`).

A report folder under `<home>/reports/<version>/` is listed on that version's index page
(`reports/<version>/index.html` + index.md, `write_version_index`) and the version on the top one
(`reports/index.html`), both rewritten whenever `write_folder` publishes a report there; each
folder's `about.json` (title, kind, one-line summary) is what the index shows of it."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.evaluation import Rows
from models.metrics import pr_curve
from models.predictions import FoldPredictions
from warehouse.atomic import atomic_write_bytes, publish_dir
from warehouse.versions import VERSION_PREFIX

log = logging.getLogger(__name__)
# Headless everywhere (Dagster workers, CI). Plots use Figure objects, never pyplot's global state,
# so reports can be rendered from several threads at once.
matplotlib.use("Agg")

NOT_COMPARABLE = "Published figures on other data (DISFA / FER-2013), not comparable with this run."
SAME_DATA = (
    "Published figures on the same data set as this run; protocols (folds, label subset, "
    "preprocessing) may still differ."
)
SCALE_NOTE = "Scale: every score (F1, precision, recall, AP, accuracy) is in %; decision thresholds are probabilities (0-1)."
# (method, published figure in %, note)
Baseline = tuple[str, float, str]
# file name -> a function that draws the plot into the given path
Plots = dict[str, Callable[[Path], Any]]


def fmt(v: float) -> str:
    """A value in its own units, three decimals (thresholds, losses, kappa: not scores in %)."""
    return "n/a" if v != v else f"{v:.3f}"  # NaN: undefined (e.g. no positives in any fold)


def pct(v: float) -> str:
    """A score in 0..1 as a percentage, one decimal: every score of a report is shown this way."""
    return "n/a" if v != v else f"{100 * v:.1f}"


def spread(r: Rows, metric: str, label: str = "") -> str:
    """A score's mean over folds in %, "± std" beside it only when there are several folds (one
    fold has no spread to show)."""
    if len(r.folds) < 2:
        return pct(r(metric, label))
    return f"{pct(r(metric, label))} ± {pct(r(metric + '_std', label))}"


def over_folds(n: int) -> str:
    """How a `spread` figure was made, for a column header or a sentence."""
    return "1 fold, no spread" if n < 2 else f"mean ± std over {n} folds"


def plain(value: object) -> str:
    """A table cell as text a reader takes in: lists comma-joined (long ones collapsed), mappings
    as "key: value; ...", None as "-", never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return collapsed([plain(v) for v in items]) or "-"
    return str(value)


# ---------------------------------------------------------------------------------------------
# document blocks rendered to Markdown and to HTML


@dataclass(frozen=True)
class Link:
    """A table cell that links to `href` (relative to the report), or shows the picture there
    (`image`, a thumbnail, `text` its alt text). `md_href`: where the Markdown rendering links
    instead (an index's report.md beside the HTML's report.html)."""

    text: str
    href: str
    image: bool = False
    md_href: str | None = None

    def markdown(self) -> str:
        if self.image:
            return f"![{self.text}]({self.href})"
        return f"[{self.text}]({self.md_href or self.href})"

    def html(self) -> str:
        e = html.escape
        if self.image:
            return f'<img class="thumb" src="{e(self.href)}" alt="{e(self.text)}">'
        return f'<a href="{e(self.href)}">{e(self.text)}</a>'


def _md_cell(value: object) -> str:
    text = value.markdown() if isinstance(value, Link) else plain(value)
    return text.replace("|", "\\|").replace("\n", " ")


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _html_cell(value: object) -> str:
    """A cell as HTML: a link, else escaped text whose Markdown bold (`**x**`) is bold."""
    if isinstance(value, Link):
        return value.html()
    return _BOLD.sub(r"<b>\1</b>", html.escape(plain(value)))


@dataclass
class Doc:
    """Blocks (headings, paragraphs, lists, tables, images) rendered to Markdown or HTML.

    `kind` and `summary` are what the version's index page shows of the report (its sort of
    report, its headline in one line); `header` fills the summary from the headline block."""

    blocks: list[tuple]
    kind: str = ""
    summary: str = ""

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str, bold: bool = False) -> None:
        self.blocks.append(("p", text, bold))

    def ul(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[object], rows: list[list[object]], text: bool = False) -> None:
        """A table; `text`: its cells are words, not figures (left-aligned in HTML)."""
        self.blocks.append(("table", header, rows, text))

    def img(self, name: str, alt: str) -> None:
        self.blocks.append(("img", name, alt))

    def links(self, links: list[Link]) -> None:
        """A line of links (an index page's way up)."""
        self.blocks.append(("links", links))

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
                lines = ["| " + " | ".join(_md_cell(c) for c in b[1]) + " |", "|" + "---|" * len(b[1])]
                lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
            elif b[0] == "links":
                out.append(" · ".join(link.markdown() for link in b[1]))
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
            "img{max-width:100%}img.thumb{width:72px;height:auto}.warn{color:#a40}"
            "table.text td,table.text th{text-align:left}</style>",
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
                head = "".join(f"<th>{_html_cell(c)}</th>" for c in b[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in b[2]
                )
                kind = ' class="text"' if len(b) > 3 and b[3] else ""
                out.append(f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
            elif b[0] == "links":
                out.append("<p>" + " · ".join(link.html() for link in b[1]) + "</p>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# plots


def save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_bars(
    path: Path,
    labels: list[str],
    series: dict[str, tuple[list[float], list[float]]],
    ylabel: str,
    scale: float = 1.0,
) -> Path:
    """Grouped bars: series name -> (means, stds) per label (0..1), std as error bars (none where
    every std is 0: one fold); `scale` 100 draws them in %, as the report's tables show them."""
    fig = Figure(figsize=(max(6.0, 0.7 * len(labels) * max(1, len(series)) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, (means, stds)) in enumerate(series.items()):
        err = [scale * v for v in stds] if any(v for v in stds) else None
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            [scale * v for v in means],
            width,
            yerr=err,
            capsize=3,
            label=name,
        )
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 12 else 0)
    ax.set_ylim(0, scale * (1.15 if len(series) > 1 else 1.0))  # headroom for the legend row
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="upper right", ncol=len(series))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pr_curves(path: Path, labels: list[str], y: np.ndarray, p: np.ndarray, aps: list[float]) -> Path:
    """Precision against recall per label, in % (the report's scale), AP in each title."""
    ncols = min(4, max(1, len(labels)))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows))
    for j, label in enumerate(labels):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        precision, recall = pr_curve(y[:, j], p[:, j])
        ax.step(100 * recall, 100 * precision, where="post")
        ax.axhline(100 * float(y[:, j].mean()) if y.shape[0] else 0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{label}  AP {pct(aps[j])} %", fontsize=10)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 102)
        ax.set_xlabel("recall (%)", fontsize=8)
        ax.set_ylabel("precision (%)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(path: Path, labels: list[str], counts: np.ndarray) -> Path:
    """Each true class's faces by predicted class, in % of the true class (rows sum to 100)."""
    rows = counts.sum(axis=1, keepdims=True)
    norm = 100 * np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    fig = Figure(figsize=(1.0 * len(labels) + 2.5, 0.9 * len(labels) + 2))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=100, cmap="Blues")
    for a in range(len(labels)):
        for b in range(len(labels)):
            colour = "white" if norm[a, b] > 50 else "black"
            ax.text(b, a, f"{norm[a, b]:.0f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (% of each true class, all folds)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="%")
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# writing a report folder


ABOUT = "about.json"  # a report folder's title, kind and one-line summary, for the index pages
REPORTS = "reports"  # the data root's folder of reports (served by warehouse.reports)
INDEX = "index"  # index.html + index.md of reports/ and of each reports/<version>/


def write_folder(out_dir: Path, doc: Doc, title: str, plots: Plots) -> dict[str, Any]:
    """Render `doc` (report.md, report.html, about.json) and the plots {file name: fn(path)} into
    a temp folder beside `out_dir`, then publish it there whole. Returns {"markdown", "html",
    "plots": [...]}. A folder published as `<home>/reports/<version>/<name>` rewrites that
    version's index page and the top one (`refresh_indexes`).

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
        about = {
            "title": title,
            "kind": doc.kind or guess_kind(out_dir.name),
            "summary": doc.summary or _first_paragraph(doc),
            "generated": datetime.now(UTC).isoformat(),
        }
        (tmp / ABOUT).write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    refresh_indexes(out_dir)
    return {
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "plots": [out_dir / name for name in plots],
    }


def _first_paragraph(doc: Doc) -> str:
    """A report's first paragraph, where it set no summary of its own."""
    return next((b[1] for b in doc.blocks if b[0] == "p"), "")


# ---------------------------------------------------------------------------------------------
# index pages: reports/index.html (the versions) and reports/<version>/index.html (its reports)

# Kinds in the order the index lists them; a folder without about.json is guessed from its name.
KINDS = (
    "model",
    "compact models",
    "comparison",
    "pseudo labels",
    "review queue",
    "experiment",
    "agreement",
    "report",
)


def guess_kind(name: str) -> str:
    """The kind of a report folder from its name (folders written before about.json existed)."""
    if name.startswith("pseudo-"):
        return "pseudo labels"
    if name.startswith("review-"):
        return "review queue"
    if name.endswith("-compact"):
        return "compact models"
    if "comparison" in name:
        return "comparison"
    if any(k in name for k in ("-experiment-", "-active-learning-", "-semi-supervised-")):
        return "experiment"  # labeling.curation's experiment ids: <kind>-<hash>
    if name.startswith(("au-", "emotion-")):
        return "model"
    return "agreement" if name == "agreement" else "report"


def refresh_indexes(out_dir: Path) -> None:
    """After a report folder was published: rewrite its version's index page when it lies at
    `<home>/reports/<version>/<name>`, and the top index when it lies anywhere under a `reports`
    folder's child (a version, or another group such as labelstudio/). An index that cannot be
    written is logged, never the report's failure: the next report writes it again."""
    out_dir = Path(out_dir)
    group, reports = out_dir.parent, out_dir.parent.parent
    if reports.name != REPORTS:
        return
    try:
        if group.name.startswith(VERSION_PREFIX):
            write_version_index(reports.parent, group.name)
        else:
            write_reports_index(reports.parent)
    except OSError as exc:
        log.warning("could not rewrite the report index under %s: %s", reports, exc)


@contextlib.contextmanager
def _index_lock(reports: Path) -> Iterator[None]:
    """One index writer at a time per data root (a lock on the reports folder itself: no lock
    file for the reports server to list), so two reports published at once both get listed."""
    fd = os.open(reports, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class Entry:
    """A report folder as an index lists it."""

    name: str
    title: str
    kind: str
    summary: str
    generated: str  # ISO time, UTC


def _entry(folder: Path) -> Entry | None:
    """The folder's about.json, or what its report.md says (older folders); None when the folder
    holds no report."""
    md, page = folder / "report.md", folder / "report.html"
    if not (md.is_file() or page.is_file()):
        return None
    try:
        about = json.loads((folder / ABOUT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        about = {}
    title, summary = about.get("title", ""), about.get("summary", "")
    if not (title and summary) and md.is_file():
        lines = md.read_text(encoding="utf-8").splitlines()
        title = title or next((x[2:] for x in lines if x.startswith("# ")), "")
        # the first bold sentence (older model reports open their results with one)
        bold = [x.strip("*") for x in lines if x.startswith("**") and x.endswith("**") and len(x) > 20]
        summary = summary or (bold[0] if bold else "")
    generated = (
        about.get("generated")
        or datetime.fromtimestamp((md if md.is_file() else page).stat().st_mtime, UTC).isoformat()
    )
    return Entry(
        folder.name, title or folder.name, about.get("kind") or guess_kind(folder.name), summary, generated
    )


def report_entries(folder: Path) -> list[Entry]:
    """The report folders directly in `folder` (temp and hidden folders left out), by kind
    (`KINDS`) then name."""
    found = []
    for child in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if child.is_dir() and not child.name.startswith("."):
            entry = _entry(child)
            if entry:
                found.append(entry)
    rank = {k: i for i, k in enumerate(KINDS)}
    return sorted(found, key=lambda e: (rank.get(e.kind, len(KINDS)), e.name))


def _short_time(iso: str) -> str:
    return iso.replace("T", " ")[:16] + " UTC" if iso else "-"


def _write_index(folder: Path, doc: Doc, title: str) -> Path:
    """index.md and index.html into `folder`, each replaced atomically."""
    atomic_write_bytes(folder / f"{INDEX}.md", doc.markdown().encode("utf-8"), durable=False)
    atomic_write_bytes(folder / f"{INDEX}.html", doc.html(title).encode("utf-8"), durable=False)
    return folder / f"{INDEX}.html"


def _reports_table(doc: Doc, entries: list[tuple[str, Entry]]) -> None:
    """One row per report (its folder relative to the index page, its entry), linked."""
    doc.table(
        ["Report", "Kind", "Headline", "Written"],
        [
            [
                Link(e.title, f"{path}/report.html", md_href=f"{path}/report.md"),
                e.kind,
                e.summary or "-",
                _short_time(e.generated),
            ]
            for path, e in entries
        ],
        text=True,
    )


def write_version_index(home: Path, version: str) -> Path:
    """`<home>/reports/<version>/index.html` (+ index.md): every report folder of the version with
    its kind, one-line summary and when it was written; then the top index (`write_reports_index`).
    Returns the HTML page's path.

    Raises:
        OSError: a page cannot be written.
    """
    reports = Path(home) / REPORTS
    folder = reports / version
    folder.mkdir(parents=True, exist_ok=True)
    with _index_lock(reports):
        entries = report_entries(folder)
        doc = Doc([])
        doc.h(1, f"Reports of dataset version {version}")
        doc.links([Link("All dataset versions", f"../{INDEX}.html", md_href=f"../{INDEX}.md")])
        doc.p(f"{len(entries)} report(s); scores in the reports are in %.")
        _reports_table(doc, [(e.name, e) for e in entries])
        page = _write_index(folder, doc, f"Reports of {version}")
        _write_top_index(Path(home))
    return page


def write_reports_index(home: Path) -> Path:
    """`<home>/reports/index.html` (+ index.md): the dataset versions that have reports, newest
    first (when each was made; else when its first report was written), each with its number of
    reports and their kinds; then the reports outside a version (Label Studio agreement). Returns
    the HTML page's path.

    Raises:
        OSError: a page cannot be written.
    """
    reports = Path(home) / REPORTS
    reports.mkdir(parents=True, exist_ok=True)
    with _index_lock(reports):
        return _write_top_index(Path(home))


def _versions_made(home: Path) -> dict[str, str]:
    """version -> when it was made (ISO, UTC), read from the data root's dataset_versions parts
    without opening the warehouse (an index must not check or repair tables); {} when they cannot
    be read."""
    made: dict[str, str] = {}
    try:
        for part in sorted((home / "tables" / "dataset_versions").glob("*.parquet")):
            rows = pq.read_table(part, columns=["version", "created_at"]).to_pylist()
            for r in rows:
                if r["created_at"] is not None:
                    when = r["created_at"].astimezone(UTC).isoformat()
                    made[r["version"]] = min(made.get(r["version"], when), when)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        log.debug("dataset versions unread, ordered by their reports: %s", exc)
        return {}
    return made


def _write_top_index(home: Path) -> Path:
    reports = home / REPORTS
    versions, others = [], []
    for child in sorted(reports.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        entries = report_entries(child)
        if child.name.startswith(VERSION_PREFIX):
            if entries:
                versions.append((child.name, entries))
        else:
            others += [(f"{child.name}/{e.name}", e) for e in entries]
    # newest first: when the version was made, else when its first report was written
    made = _versions_made(home)
    versions.sort(key=lambda v: made.get(v[0]) or min(e.generated for e in v[1]), reverse=True)
    doc = Doc([])
    doc.h(1, "Reports")
    doc.p("Dataset versions, newest first; scores in the reports are in %.")
    doc.table(
        ["Dataset version", "Made", "Reports", "Kinds", "Last report written"],
        [
            [
                Link(name, f"{name}/{INDEX}.html", md_href=f"{name}/{INDEX}.md"),
                _short_time(made.get(name, "")),
                str(len(entries)),
                ", ".join(dict.fromkeys(e.kind for e in entries)),
                _short_time(max(e.generated for e in entries)),
            ]
            for name, entries in versions
        ],
        text=True,
    )
    if others:
        doc.h(2, "Not tied to a dataset version")
        _reports_table(doc, others)
    return _write_index(reports, doc, "Reports")


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
    """Title, task, dataset version, backbone weights, time, the scale; the headline block (the
    figure that decides, first: `headline` rows of name and value, scores in %), which is also the
    report's summary on the index page; then the model summary as given (`plain` values)."""
    doc.h(1, title)
    weights = _weights_source(model)
    doc.ul(
        [
            f"Task: {task}",
            f"Dataset version: {dataset_version}",
            f"Backbone weights: {weights}",
            f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            SCALE_NOTE,
        ]
    )
    if headline:
        doc.h(2, "Headline")
        doc.table(["Figure", "Value"], [[name, value] for name, value in headline])
        doc.summary = doc.summary or "; ".join(f"{name}: {value.strip('*')}" for name, value in headline)
    if model:
        doc.h(2, "Model")
        doc.table(["Setting", "Value"], [[k, plain(v)] for k, v in model.items()])


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
    """`metric` per label and fold in %, with mean ± std when there are several folds."""
    several = len(r.folds) > 1
    head = [first] + [f"fold {k} (%)" for k in r.folds] + (["mean ± std (%)"] if several else [])
    doc.table(
        head,
        [
            [lab] + [pct(r(metric, lab, k)) for k in r.folds] + ([spread(r, metric, lab)] if several else [])
            for lab in labels
        ],
    )


def compact_section(doc: Doc, level: int, notes: list[str], table: list[dict[str, Any]]) -> None:
    """Seed 004's compact models beside the fp32 one: the notes (held-out faces, how latency was
    measured, how each variant was made), then size, latency and the task metric per variant (%)."""
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
            "Value (%)",
            "Agrees with fp32 (% of decisions)",
        ],
        [
            [
                r["variant"],
                r["file"],
                f"{r['size_mb']:.2f}",
                f"{r['latency_ms_b1']:.2f}",
                f"{r['latency_ms_b64']:.2f}",
                r["metric"],
                pct(r["value"]),
                pct(r["agreement"]),
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
    """Published figures (in %) beside this run's (`this_run`: (name, value in 0..1, note) rows,
    shown in %), under a warning when they are on other data."""
    doc.h(2, "Published baselines")
    doc.p(SAME_DATA if on_published_data else NOT_COMPARABLE, bold=True)
    doc.table(
        ["Method", f"{metric_name} (%)", "Note"],
        [[m, f"{v:.1f}", note] for m, v, note in published]
        + [[name, pct(v), note] for name, v, note in this_run],
    )


def _per_fold_list(r: Rows, metric: str) -> str:
    """ " (fold 0: a, fold 1: b)" in %, or nothing for one fold (its figure is the mean)."""
    if len(r.folds) < 2:
        return ""
    return " (" + ", ".join(f"fold {k}: {pct(r(metric, fold=k))}" for k in r.folds) + ")"


def multilabel_sections(doc: Doc, folds: Sequence[FoldPredictions], r: Rows, plots: Plots) -> None:
    """Avg.F1, per-label F1 / precision / recall / AP, thresholds per fold, PR curves (AUs)."""
    labels = list(folds[0].labels)
    n = len(r.folds)
    doc.h(2, "Avg.F1")
    doc.p(
        f"Avg.F1 (mean F1 over {len(labels)} AUs), {over_folds(n)}: {spread(r, 'avg_f1')} %"
        f"{_per_fold_list(r, 'avg_f1')}.",
        bold=True,
    )
    thresholds = "chosen per AU on validation data (maximum F1)"
    if any(f.thresholds is None for f in folds):
        thresholds = "0.5 where a fold has no validation thresholds"
    doc.p(
        f"Precision / recall / F1 at the decision thresholds {thresholds}; zero division counts as 0; "
        + ("± is the sample standard deviation over folds; " if n > 1 else "")
        + "AP = average precision."
    )
    undefined = {lab: int(r("folds_without_positives", lab)) for lab in labels}
    doc.p(
        f"Pooled over every fold's held-out faces (each at its own fold's thresholds): Avg.F1 "
        f"{pct(r('avg_f1_pooled'))} %; mean over the folds where an AU has positives: "
        f"{pct(r('avg_f1_defined'))} %."
        + (
            " Folds without positives of an AU (its F1 there is undefined; the per-fold mean above "
            "counts it as 0): " + ", ".join(f"{lab} {n}" for lab, n in undefined.items() if n) + "."
            if any(undefined.values())
            else " Every fold has positives of every AU."
        )
    )
    doc.h(2, "Per-AU summary")
    how = over_folds(n)
    doc.table(
        [
            "AU",
            f"F1 % ({how})",
            "F1 % pooled",
            "F1 % (folds with positives)",
            f"Precision % ({how})",
            f"Recall % ({how})",
            "AP % (all folds)",
            "Positives",
            "Folds without positives",
        ],
        [
            [
                lab,
                spread(r, "f1", lab),
                pct(r("f1_pooled", lab)),
                pct(r("f1_defined", lab)),
                spread(r, "precision", lab),
                spread(r, "recall", lab),
                pct(r("ap_pooled", lab)),
                str(int(r("support_total", lab))),
                str(undefined[lab]),
            ]
            for lab in labels
        ],
    )
    doc.img("f1_per_au.png", "per-AU F1 in %" + (", mean over folds with std error bars" if n > 1 else ""))
    if n > 1:  # one fold's table would repeat the summary above
        for metric, name in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
            doc.h(3, f"{name} per fold")
            per_fold_table(doc, r, metric, labels, "AU")
    doc.h(3, "Decision thresholds per fold")
    doc.table(
        ["AU"] + [f"fold {k} (probability)" for k in r.folds],
        [[lab] + [fmt(r("threshold", lab, k)) for k in r.folds] for lab in labels],
    )
    doc.h(2, "Precision-recall curves (all folds pooled)")
    doc.img("pr_curves.png", "precision-recall curve per AU in %; dashed line = positive rate")

    means = [r("f1", lab) for lab in labels]
    stds = [r("f1_std", lab) for lab in labels]
    aps = [r("ap_pooled", lab) for lab in labels]
    y_all = np.concatenate([np.asarray(f.y_true).astype(bool) for f in folds])
    p_all = np.concatenate([np.asarray(f.prob, dtype=np.float64) for f in folds])
    plots["f1_per_au.png"] = lambda path: plot_bars(path, labels, {"F1": (means, stds)}, "F1 (%)", scale=100)
    plots["pr_curves.png"] = lambda path: plot_pr_curves(path, labels, y_all, p_all, aps)


def multiclass_sections(doc: Doc, folds: Sequence[FoldPredictions], r: Rows, plots: Plots) -> None:
    """Accuracy, per-class precision (seed 004's Table 1), per-class scores, confusion matrix."""
    labels = list(folds[0].labels)
    n = len(r.folds)
    doc.h(2, "Accuracy")
    doc.p(f"Accuracy, {over_folds(n)}: {spread(r, 'accuracy')} %{_per_fold_list(r, 'accuracy')}.", bold=True)
    doc.p(
        "Prediction = the most probable class; zero division counts as 0"
        + ("; ± is the sample std over folds." if n > 1 else ".")
    )
    doc.h(2, "Precision per class, % (as seed 004's Table 1)")
    rows = [
        [f"fold {k}"] + [pct(r("precision", lab, k)) for lab in labels] + [pct(r("mean_precision", fold=k))]
        for k in r.folds
    ]
    if n > 1:
        rows.append(["mean"] + [pct(r("precision", lab)) for lab in labels] + [pct(r("mean_precision"))])
    doc.table(["Fold"] + labels + ["Average"], rows)
    doc.h(2, "Per-class scores")
    how = over_folds(n)
    doc.table(
        ["Class", f"Precision % ({how})", f"Recall % ({how})", f"F1 % ({how})", "Samples"],
        [
            [
                lab,
                spread(r, "precision", lab),
                spread(r, "recall", lab),
                spread(r, "f1", lab),
                str(int(r("support_total", lab))),
            ]
            for lab in labels
        ],
    )
    doc.p(f"Macro F1: {spread(r, 'macro_f1')} %; mean per-class precision: {spread(r, 'mean_precision')} %.")
    doc.h(2, "Confusion matrix (all folds)")
    doc.img("confusion_matrix.png", "confusion matrix, % of each true class")
    counts = np.array([[r("confusion_total", f"{a}->{b}") for b in labels] for a in labels])
    doc.table(
        ["true \\ predicted (faces)"] + labels,
        [[a] + [str(int(v)) for v in row] for a, row in zip(labels, counts)],
    )
    plots["confusion_matrix.png"] = lambda path: plot_confusion(path, labels, counts)
