"""The import contract (pyproject.toml [tool.importlinter]): layers point one way, Dagster
stays above the libraries. Run here so that pytest fails on an upward import too, and shown
to fail on a copy of the code with one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CONFIG['contracts'])} kept, 0 broken" in result.stdout


def test_every_package_is_in_a_layer():
    """A new top-level package outside the contract would be unchecked."""
    # benchmarks, like tests, sit above everything and may import any layer
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"benchmarks"}
    assert packages == set(CONFIG["root_packages"])
    (layers,) = [c["layers"] for c in CONFIG["contracts"] if c["type"] == "layers" and "containers" not in c]
    assert layers == ["ferlab", "dagster_project", "assets", "labeling", "models", "warehouse"]


@pytest.fixture
def code_copy(tmp_path: Path) -> Path:
    for name in CONFIG["root_packages"]:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("warehouse/upward.py", "from labeling import geometry\n", "Layers"),
        ("models/upward.py", "def late():\n    import ferlab.demodata\n", "Layers"),
        ("labeling/detection/orchestrated.py", "import dagster\n", "No Dagster below assets"),
        ("labeling/detection/upward.py", "from labeling.curation import review\n", "Rooms of labeling"),
        ("models/tasks.py", "import models.settings\n", "models: settings"),
    ],
)
def test_an_upward_import_breaks_the_build(code_copy: Path, module: str, line: str, contract: str):
    (code_copy / module).write_text(line)
    result = _lint(code_copy)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout
