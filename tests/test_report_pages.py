"""The pages a data team reads: one scale (%) and no spread over one fold in model reports, no
raw Python lists in a table, the pseudo-label and review-queue reports, and the index pages of
a dataset version's reports and of every version."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeling.curation.pseudo import Cut, PseudoLabelReport
from labeling.curation.reports import (
    EXAMPLES,
    pseudo_report_dir,
    review_report_dir,
    write_pseudo_report,
    write_review_report,
)
from labeling.curation.review import REASONS, ReviewReport, _queue_rows
from labeling.curation.settings import PseudoLabelSettings, ReviewSettings
from models import render
from models.evaluation import Rows
from models.metrics import choose_thresholds
from models.pipeline import _validation
from models.predictions import FoldPredictions
from models.report import evaluate_folds, write_report

AUS = ["AU1", "AU2", "AU4", "AU12"]
EMOTIONS = ["angry", "happy", "sad"]


def _au_folds(n_folds: int, seed: int = 0, n: int = 60) -> list[FoldPredictions]:
    rng = np.random.default_rng(seed)
    folds = []
    for k in range(n_folds):
        y = rng.random((n, len(AUS))) < 0.3
        p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
        folds.append(FoldPredictions(k, AUS, y, p, choose_thresholds(y, p), [f"disfa:S{k}a", f"disfa:S{k}b"]))
    return folds


def _emotion_folds(n_folds: int, n: int = 60) -> list[FoldPredictions]:
    rng = np.random.default_rng(3)
    folds = []
    for k in range(n_folds):
        y = rng.integers(0, len(EMOTIONS), n)
        p = rng.random((n, len(EMOTIONS)))
        p[np.arange(n), y] += 0.6
        folds.append(FoldPredictions(k, EMOTIONS, y, p / p.sum(1, keepdims=True), None, [f"id{k}"]))
    return folds


# ---- one scale, no raw lists, no spread over one fold -------------------------------------------
@pytest.mark.parametrize("task", ["au", "emotion"])
def test_one_fold_shows_its_figure_without_a_spread_in_percent(tmp_path, task):
    folds = _au_folds(1) if task == "au" else _emotion_folds(1)
    md = write_report(tmp_path / "r", task=task, title="t", dataset_version="v-1", model={}, folds=folds)[
        "markdown"
    ].read_text()
    r = Rows(evaluate_folds(task, folds))
    headline = "avg_f1" if task == "au" else "accuracy"
    assert "±" not in md and "0.000" not in md  # no "± 0.000 over 1 fold"
    assert "1 fold, no spread" in md
    assert f"{100 * r(headline):.1f} %" in md  # the headline figure, in %
    assert f"{r(headline):.3f}" not in md  # and never in 0..1 beside it


def test_several_folds_keep_mean_and_spread_in_percent(tmp_path):
    folds = _au_folds(3)
    md = write_report(tmp_path / "r", task="au", title="t", dataset_version="v-1", model={}, folds=folds)[
        "markdown"
    ].read_text()
    r = Rows(evaluate_folds("au", folds))
    assert f"{100 * r('avg_f1'):.1f} ± {100 * r('avg_f1_std'):.1f} %" in md
    assert "F1 % (mean ± std over 3 folds)" in md  # the scale in the column header
    assert f"| AU4 | {100 * r('f1', 'AU4', 0):.1f} |" in md  # per-fold tables in % too
    # the only 0..1 figures are the decision thresholds, which say they are probabilities
    assert "fold 0 (probability)" in md
    scores = re.findall(r"\b0\.\d{3}\b", md.split("### Decision thresholds per fold")[0])
    assert scores == [], scores


def test_no_python_list_or_dict_in_a_table_cell(tmp_path):
    model = {
        "groups": ["disfa:SN001", "disfa:SN002"],
        "settings": {"loss": "bce", "sizes": [64, 112]},
        "validation": _validation(
            [
                {"fold": 0, "validation": "held-out groups ['disfa:SN002', 'disfa:SN007']"},
                {"fold": 1, "validation": "held-out groups disfa:SN007, disfa:SN011"},
            ]
        ),
        "none": None,
    }
    md = write_report(
        tmp_path / "r", task="au", title="t", dataset_version="v-1", model=model, folds=_au_folds(2)
    )["markdown"].read_text()
    model_table = md.split("## Model", 1)[1].split("\n## ", 1)[0]
    assert not re.search(r"[\[\]{}']", model_table), model_table
    assert "| groups | disfa:SN001, disfa:SN002 |" in model_table
    assert "| settings | loss: bce; sizes: 64, 112 |" in model_table
    assert "fold 0: held-out groups disfa:SN002, disfa:SN007; fold 1: held-out groups disfa:SN007" in md
    assert render.plain(list(range(20))).endswith("... (20 in all)")  # long lists collapse


# ---- the pseudo-label report ------------------------------------------------------------------------
def _pseudo_report() -> PseudoLabelReport:
    return PseudoLabelReport(
        task="au",
        model_id="au-mobilenet_v2-bce-abc",
        dataset_version="v-0000000000000002",
        faces=400,
        labeled_faces=300,
        rows=900,
        added=850,
        updated=50,
        skipped=2,
        thresholds={
            "AU1": Cut(0.2, 0.7, 0.93, 0.91, 0.8, support_lower=120, support_upper=45),
            "AU2": Cut(None, 0.9, None, 0.95, 0.1, support_upper=12),
            "AU9": None,
        },
        per_label={"AU1": {"present": 60, "absent": 180}, "AU2": {"present": 20, "absent": 0}},
        per_source={
            "fer2013": {"calibration": "human:fer2013:100", "verified": True, "rows": 800},
            "scraped": {"calibration": "out-of-fold", "verified": False, "rows": 100},
        },
        source_thresholds={
            "fer2013": {"AU1": Cut(0.3, 0.6, 0.9, 0.92, 0.55, 40, 20), "AU2": None, "AU9": None}
        },
        withdrawn=3,
    )


def test_the_pseudo_label_report_shows_cuts_precision_coverage_and_unmet_targets(tmp_path):
    report = _pseudo_report()
    files = write_pseudo_report(tmp_path, report, PseudoLabelSettings(target_precision=0.9))
    folder = pseudo_report_dir(tmp_path, report)
    assert folder == tmp_path / "reports" / report.dataset_version / "pseudo-au-au-mobilenet_v2-bce-abc"
    assert files["markdown"] == folder / "report.md" and files["html"].is_file()
    md = files["markdown"].read_text()
    # the headline first: faces labeled and coverage
    assert md.index("## Headline") < md.index("## Per AU") < md.index("## Per source")
    assert "| Faces labeled (at least one pseudo label) | 300 |" in md
    assert "| Coverage (% of candidate faces labeled) | **75.0** |" in md
    assert "| AUs without pseudo labels (target precision not met) | AU9 |" in md
    assert "Target precision 90.0 %" in md
    # per AU: cuts (probabilities), precision on each side (%), support, held-out and candidate coverage
    assert "| AU1 | 0.200 | 0.700 | 93.0 | 91.0 | 120 | 45 | 80.0 | 180 | 60 | 60.0 |" in md
    assert "| AU2 | - | 0.900 | - | 95.0 | - | 12 | 10.0 | 0 | 20 | 5.0 |" in md
    assert "| AU9 | - | - | - | - | - | - | - |" in md
    assert "AU2 (present)" in md  # one side only
    # per source: where each got its cuts, and the cuts chosen on fer2013's own human labels
    assert "| scraped | out-of-fold | no | 100 |" in md
    assert "### Cuts on fer2013's human-labeled faces" in md
    assert "| AU1 | 0.300 | 0.600 | 90.0 | 92.0 | 40 | 20 | 55.0 |" in md
    assert "| out-of-fold predictions | AU9 |" in md and "| fer2013's human-labeled faces | AU2, AU9 |" in md
    assert "| AUs labeled on no candidate face | AU9 |" in md
    assert "0.75" not in md and "0.93" not in md  # shares only in %
    index = (folder.parent / "index.html").read_text()
    assert (
        f'href="{folder.name}/report.html"' in index
        and "300 of 400 candidate faces labeled (75.0 %)" in index
    )
    assert "target not met: AU9; unverified: scraped" in index  # the index line says what is missing


def test_the_emotion_pseudo_label_report_has_one_cut_per_class(tmp_path):
    report = PseudoLabelReport(
        task="emotion",
        model_id="emotion-cnn-x",
        dataset_version="v-0000000000000003",
        faces=100,
        labeled_faces=40,
        rows=40,
        added=40,
        updated=0,
        skipped=0,
        thresholds={"happy": Cut(None, 0.8, None, 0.95, 0.3, support_upper=30), "sad": None},
        per_label={"happy": {"labeled": 40}, "sad": {"labeled": 0}},
    )
    md = write_pseudo_report(tmp_path, report)["markdown"].read_text()
    assert "| Class | Top p ≥ (cut) | Precision % | Support (held-out) | Coverage % (held-out) |" in md
    assert "| happy | 0.800 | 95.0 | 30 | 30.0 | 40 | 40.0 |" in md
    assert "| Classes without pseudo labels (target precision not met) | sad |" in md


# ---- the review-queue report ------------------------------------------------------------------------
def _review_rows(home: Path, n: int = 12) -> tuple[pa.Table, list[str]]:
    """Review-queue rows of n faces (a small JPEG each under media/), most with two reasons."""
    ids = [f"crop{i:02d}" for i in range(n)]
    media = [f"media/{c[:2]}/{c}.jpg" for c in ids]
    for path in media:
        (home / path).parent.mkdir(parents=True, exist_ok=True)
        (home / path).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    faces = pa.table({"crop_id": ids, "image_id": [f"img{i}" for i in range(n)], "media_path": media})
    found = [(i, "between_thresholds", i / n, f"AU1 0.{i:02d}") for i in range(n)]
    found += [(i, "low_detection_score", 1 - i / n, f"score {i / n:.2f}") for i in range(0, n, 2)]
    found += [(3, "likely_mistake", 0.95, "human labels; worst AU4 p=0.05")]
    return _queue_rows("au:au-m", "au-m", faces, found), ids


def test_the_review_queue_report_counts_reasons_priorities_and_shows_the_top_faces(tmp_path):
    rows, ids = _review_rows(tmp_path)
    report = ReviewReport(
        "au:au-m", "au-m", "v-0000000000000002", 50, {}, added=7, notes=["most_unique skipped"]
    )
    files = write_review_report(tmp_path, report, rows, REASONS, ReviewSettings())
    folder = review_report_dir(tmp_path, report)
    assert folder.name == "review-au-au-m" and files["markdown"] == folder / "report.md"
    md = files["markdown"].read_text()
    assert "| Rows found by this build | **19** |" in md
    assert "| Faces among them | 12 (24.0 % of the version's faces) |" in md
    assert "| between_thresholds | 12 | 12 |" in md and "| low_detection_score | 6 | 6 |" in md
    assert "| most_unique | 0 | 0 | - | - |" in md  # every reason is counted, none left out
    # priorities per band, per reason and overall
    assert "| Reason | 0.0-0.2 | 0.2-0.4 | 0.4-0.6 | 0.6-0.8 | 0.8-1.0 |" in md
    assert "| between_thresholds | 3 | 2 | 3 | 2 | 2 |" in md  # priorities i/12, i = 0..11
    assert "| all | 4 | 3 | 4 | 3 | 5 |" in md
    # examples: the top rows per reason, highest priority first, a thumbnail copied for each
    section = md.split("### between_thresholds", 1)[1].split("###", 1)[0]
    shown = re.findall(r"\| (crop\d\d) \| (\d\.\d\d) \|", section)
    assert [c for c, _ in shown] == [ids[i] for i in (11, 10, 9, 8, 7)] and len(shown) == EXAMPLES
    thumbs = sorted(p.name for p in folder.glob("thumb-*"))
    assert len(thumbs) <= EXAMPLES * len(REASONS) and "thumb-crop11.jpg" in thumbs
    assert "![crop11](thumb-crop11.jpg)" in md
    html = files["html"].read_text()
    for src in re.findall(r'<img class="thumb" src="([^"]+)"', html):
        assert (folder / src).is_file()
    assert "media/" not in html  # the crops' own paths are not served: only the copies are linked
    index = (folder.parent / "index.md").read_text()
    assert "[Review queue au:au-m](review-au-au-m/report.md)" in index


# ---- the index pages -----------------------------------------------------------------------------
def test_the_index_lists_every_report_folder_of_the_version_and_the_versions_newest_first(tmp_path):
    home = tmp_path
    old, new = "v-0000000000000001", "v-0000000000000002"
    write_report(
        home / "reports" / old / "au-old",
        task="au",
        title="AU old",
        dataset_version=old,
        model={},
        folds=_au_folds(2),
    )
    (home / "reports" / old / "about.json").write_text("{}")  # a stray file is no report
    for name in ("au-m", "emotion-e"):
        task = name.split("-")[0]
        write_report(
            home / "reports" / new / name,
            task=task,
            title=f"{task} model",
            dataset_version=new,
            model={},
            folds=_au_folds(2) if task == "au" else _emotion_folds(2),
            headline=[("Figure (%)", "**12.5**")],
        )
    # a folder of an older ferlab (no about.json), listed once any report of the version is written
    legacy = home / "reports" / new / "au-m-compact"
    legacy.mkdir()
    (legacy / "report.md").write_text(
        "# Compact models of au-m\n\n**int8 agrees with fp32 on 99.0 % of faces**\n"
    )
    (legacy / "report.html").write_text("<html></html>")
    (home / "reports" / new / ".au-m.tmp-123").mkdir()  # a report being written: not listed
    write_pseudo_report(home, _pseudo_report())
    report = ReviewReport("au:au-m", "au-m", new, 50, {}, added=0)
    write_review_report(home, report, _review_rows(home)[0], REASONS)
    agreement = render.Doc([])
    agreement.p("3 faces answered by two annotators or more")
    render.write_folder(home / "reports" / "labelstudio" / "agreement", agreement, "Annotator agreement", {})

    folder = home / "reports" / new
    page, md = (folder / "index.html").read_text(), (folder / "index.md").read_text()
    listed = re.findall(r'<a href="([^"]+)/report.html">', page)
    expected = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert sorted(listed) == expected and len(expected) == 5
    # by kind: models, compact, pseudo labels, review queue
    assert listed == [
        "au-m",
        "emotion-e",
        "au-m-compact",
        "pseudo-au-au-mobilenet_v2-bce-abc",
        "review-au-au-m",
    ]
    assert "Figure (%): 12.5" in page  # a model's headline block is its line
    assert "int8 agrees with fp32 on 99.0 % of faces" in md  # an old folder's first bold line
    assert "[All dataset versions](../index.md)" in md and 'href="../index.html"' in page
    assert json.loads((folder / "au-m" / "about.json").read_text())["kind"] == "model"

    top = (home / "reports" / "index.html").read_text()
    versions = re.findall(r'<a href="(v-[0-9a-f]+)/index.html">', top)
    assert versions == [new, old]  # newest first (no versions table here: by their first report)
    assert 'href="labelstudio/agreement/report.html"' in top  # reports outside a version too
    assert (home / "reports" / old / "index.html").is_file()
    assert not list(home.glob("reports/**/.index*"))  # index writes leave no temp files


def test_a_report_outside_a_reports_folder_writes_no_index(tmp_path):
    write_report(tmp_path / "r", task="au", title="t", dataset_version="v-1", model={}, folds=_au_folds(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_versions_are_ordered_by_when_they_were_made(tmp_path):
    """A version re-reported later is not the newest: dataset_versions says when each was made."""
    older, newer = "v-00000000000000aa", "v-00000000000000bb"
    table = tmp_path / "tables" / "dataset_versions"
    table.mkdir(parents=True)
    made = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)]
    pq.write_table(pa.table({"version": [older, newer], "created_at": made}), table / "part-0.parquet")
    for version in (newer, older):  # the older version's report is written last
        write_report(
            tmp_path / "reports" / version / "au-m",
            task="au",
            title="t",
            dataset_version=version,
            model={},
            folds=_au_folds(1),
        )
    top = (tmp_path / "reports" / "index.md").read_text()
    assert re.findall(r"\[(v-[0-9a-f]+)\]", top) == [newer, older]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("au-mobilenet_v2-bce-fed3880209", "model"),
        ("au-mobilenet_v2-bce-fed3880209-compact", "compact models"),
        ("au-loss-comparison-mobilenet_v2", "comparison"),
        ("au-pseudo-experiment-0123456789", "experiment"),
        ("au-active-learning-0123456789", "experiment"),
        ("pseudo-au-au-m", "pseudo labels"),
        ("review-emotion-emotion-m", "review queue"),
    ],
)
def test_a_folder_without_about_json_gets_its_kind_from_its_name(name, kind):
    assert render.guess_kind(name) == kind


def test_the_reports_server_opens_on_the_index_pages(tmp_path):
    """`ferlab dev` prints .../reports/: that address now shows the versions, one click from each report."""
    import socket
    import threading
    import urllib.request

    from warehouse.reports import report_url, reports_server

    version = "v-0000000000000002"
    write_pseudo_report(tmp_path, _pseudo_report())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = reports_server(tmp_path, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(report_url("reports/", port), timeout=10) as answer:
            assert f'href="{version}/index.html"' in answer.read().decode()
        with urllib.request.urlopen(report_url(f"reports/{version}/", port), timeout=10) as answer:
            assert 'href="pseudo-au-au-mobilenet_v2-bce-abc/report.html"' in answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_a_bold_figure_is_bold_in_html_not_asterisks():
    from models.render import Doc

    doc = Doc([])
    doc.table(["Figure", "Value"], [["Avg.F1 (%)", "**69.8**"]])
    assert "<b>69.8</b>" in doc.html("t") and "**" not in doc.html("t")
    assert "**69.8**" in doc.markdown()
