"""Test isolation: every tool that writes under $HOME (Dagster, Ultralytics, FiftyOne) is
pointed at a throwaway folder before anything imports them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SANDBOX = Path(tempfile.mkdtemp(prefix="ferlab-tests-"))
for var, sub in {
    "HOME": "home",
    "DAGSTER_HOME": "dagster",
    "YOLO_CONFIG_DIR": "ultralytics",
    "FIFTYONE_DATABASE_DIR": "fiftyone-db",
    "FERLAB_HOME": "var",
}.items():
    (_SANDBOX / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_SANDBOX / sub)
(_SANDBOX / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
os.environ.update(
    DAGSTER_DISABLE_TELEMETRY="1",
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
    YOLO_OFFLINE="1",
    YOLO_AUTOINSTALL="0",
)


@pytest.fixture
def wh(tmp_path):
    from warehouse import Warehouse

    return Warehouse(tmp_path / "home")
