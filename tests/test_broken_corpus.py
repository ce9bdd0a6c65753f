"""The broken-input corpus (`tests/data/make_broken.py`), end to end through the `ferlab` command
line: each case ends in its expected rejects (reason, count, lines) and good rows, or in its one
clear error line; nothing of an outside file leaks into a reject, nothing runs from a weights file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from warehouse import Warehouse

pytestmark = pytest.mark.slow  # every case runs the CLI in a subprocess: left out of `make test-fast`

_SCRIPT = Path(__file__).parent / "data" / "make_broken.py"
_spec = importlib.util.spec_from_file_location("make_broken", _SCRIPT)
make_broken = importlib.util.module_from_spec(_spec)
sys.modules["make_broken"] = make_broken  # dataclasses look their module up
_spec.loader.exec_module(make_broken)


# Schema drift in the warehouse itself (issue 21): a part off its table's contract, planted by
# `ferlab sql --write` (`{home}` is the case's data root) between two commands, is quarantined as
# a `schema_mismatch` when the next command opens the warehouse; the views keep their rows and types.
_LABELS_V1 = ("ingest", "fer2013", "{corpus}/fer2013/labels_v1.csv")  # 4 good rows
_PLANT = "COPY (SELECT {select}) TO '{{home}}/tables/{table}/{file}' (FORMAT parquet)"


def _plant(select: str, table: str, file: str) -> tuple[str, ...]:
    """The command that writes `SELECT select` as a part named `file` into `table`'s folder."""
    return ("sql", "--write", _PLANT.format(select=select, table=table, file=file))


_PLANT_NO_ANNOTATOR = _plant(
    "* EXCLUDE (annotator) FROM emotion_labels_history", "emotion_labels", "part-no-annotator.parquet"
)
SCHEMA_DRIFT = [
    make_broken.Case(
        "warehouse: a label part missing a column is quarantined; a re-ingest adds no label twice",
        (
            _LABELS_V1,
            _PLANT_NO_ANNOTATOR,
            _LABELS_V1,
            ("sql", "SELECT count(*) AS n, count(annotator) AS annotated FROM emotion_labels_history"),
        ),
        rejects={"schema_mismatch": 1},
        images=4,
        stdout="n,annotated\n4,4\n",
    ),
    make_broken.Case(
        "warehouse: a column stored with another type is quarantined; the view keeps its type",
        (
            _LABELS_V1,
            _plant(
                "* REPLACE (CAST(confidence AS VARCHAR) AS confidence) FROM emotion_labels_history",
                "emotion_labels",
                "part-retyped.parquet",
            ),
            ("sql", "SELECT typeof(confidence) AS t, count(*) AS n FROM emotion_labels_history GROUP BY t"),
        ),
        rejects={"schema_mismatch": 1},
        images=4,
        stdout="t,n\nFLOAT,4\n",
    ),
    make_broken.Case(
        "warehouse: a foreign Parquet file in a table's folder adds no rows",
        (
            _LABELS_V1,
            _plant("'my notes' AS note, 42 AS n", "images", "notes.parquet"),
            ("sql", "SELECT count(*) AS n, count(image_id) AS ids FROM images"),
        ),
        rejects={"schema_mismatch": 1},
        images=4,
        stdout="n,ids\n4,4\n",
    ),
    make_broken.Case(
        "warehouse: doctor names a part off the contract; --repair quarantines it",
        (
            _LABELS_V1,
            _PLANT_NO_ANNOTATOR,
            ("doctor", "--repair"),
        ),
        rejects={"schema_mismatch": 1},
        images=4,
        stdout="part-no-annotator.parquet: missing column annotator",
    ),
]


# An output that is one of the inputs (issue 21): refused in one line before a model loads, the
# input untouched. `{corpus}/analyze/in.mp4` is a copy of a corpus video; rows.csv a hard link to it.
SAME_PATH = [
    make_broken.Case(
        "analyze: --video naming the input video is refused",
        (("analyze", "{corpus}/analyze/in.mp4", "--video", "{corpus}/analyze/in.mp4"),),
        error="is the input",
    ),
    make_broken.Case(
        "analyze: --out hard-linked to the input is refused",
        (("analyze", "{corpus}/analyze/in.mp4", "--out", "{corpus}/analyze/rows.csv"),),
        error="is the input",
    ),
]


def _same_path_inputs(out: Path) -> None:
    folder = out / "analyze"
    folder.mkdir()
    video = next((out / "disfa").rglob("*.avi"))
    (folder / "in.mp4").write_bytes(video.read_bytes())
    (folder / "rows.csv").hardlink_to(folder / "in.mp4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("broken")
    cases = make_broken.build_corpus(out, special=True)
    _same_path_inputs(out)
    return out, cases + SCHEMA_DRIFT + SAME_PATH


def _case_names() -> list[str]:
    return [c["name"] for c in json.loads((_SCRIPT.parent / "broken" / "cases.json").read_text())] + [
        "fer2013: a 60 MB line rejects its row only",
        *(c.name for c in SCHEMA_DRIFT + SAME_PATH),
    ]


def test_the_committed_corpus_is_what_the_script_makes(tmp_path):
    fresh = make_broken.build_corpus(tmp_path)
    committed = json.loads((_SCRIPT.parent / "broken" / "cases.json").read_text())
    assert json.loads((tmp_path / "cases.json").read_text()) == committed
    for path in sorted(tmp_path.rglob("*")):
        rel = path.relative_to(tmp_path)
        twin = _SCRIPT.parent / "broken" / rel
        assert twin.is_symlink() == path.is_symlink() and (twin.exists() or twin.is_symlink()), rel
        if path.is_file() and not path.is_symlink() and path.suffix in (".csv", ".txt", ".gz"):
            assert twin.read_bytes() == path.read_bytes(), rel
    assert len(fresh) >= 15


@pytest.mark.parametrize("name", _case_names())
def test_case(corpus, tmp_path, name):
    out, cases = corpus
    case = next(c for c in cases if c.name == name)
    home = tmp_path / "home"
    for args in case.commands:
        argv = [a.replace("{corpus}", str(out)).replace("{home}", str(home)) for a in args]
        proc = subprocess.run(
            [sys.executable, "-m", "ferlab", "--home", str(home), *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "PWNED").exists(), "code ran from a weights file"
    if case.error is not None:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
        assert proc.returncode != 0 and lines and lines[-1].startswith("error: "), proc.stderr
        assert case.error in lines[-1], lines[-1]
        assert make_broken.SECRET not in proc.stderr + proc.stdout
        if case in SAME_PATH:
            assert (out / "analyze" / "in.mp4").read_bytes() == next(
                (out / "disfa").rglob("*.avi")
            ).read_bytes()
        return
    assert proc.returncode == 0, proc.stderr
    if case.stdout:
        assert case.stdout in proc.stdout, proc.stdout
    wh = Warehouse(home)
    rejects = wh.sql("SELECT reason, line, detail FROM rejects").to_pylist()
    assert dict(Counter(r["reason"] for r in rejects)) == case.rejects, rejects
    for reason, lines in case.lines.items():
        assert sorted(r["line"] for r in rejects if r["reason"] == reason) == lines, reason
    assert not any(make_broken.SECRET in (r["detail"] or "") for r in rejects)
    assert make_broken.SECRET not in proc.stdout + proc.stderr
    if case.images is not None:
        assert wh.count("images") == case.images
