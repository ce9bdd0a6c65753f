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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("broken")
    return out, make_broken.build_corpus(out, special=True)


def _case_names() -> list[str]:
    return [c["name"] for c in json.loads((_SCRIPT.parent / "broken" / "cases.json").read_text())] + [
        "fer2013: a 60 MB line rejects its row only"
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
        argv = [a.replace("{corpus}", str(out)) for a in args]
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
