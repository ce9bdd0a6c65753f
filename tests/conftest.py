"""Test isolation: every tool that writes under $HOME (Dagster, Ultralytics, FiftyOne) is
pointed at a throwaway folder before anything imports them."""

from __future__ import annotations

import os
import shutil
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


class DemoRenders:
    """The demo data, rendered once per (size, seed) for the whole session: rendering the small
    demo is the costliest fixture in the suite, and a dozen modules want it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, size: str = "small", seed: int = 0) -> Path:
        """The shared render; read it, never write under it (use `copy` for that)."""
        from ferlab.demodata import generate_demo_data

        out = self.root / f"{size}-{seed}"
        done = out / ".rendered"
        if not done.exists():
            if out.exists():  # a render interrupted earlier in this session
                shutil.rmtree(out)
            generate_demo_data(out, seed=seed, size=size)
            done.touch()
        return out

    def copy(self, dest: Path, size: str = "small", seed: int = 0) -> Path:
        """A private copy of the render at `dest` (a new folder); returns `dest`."""
        shutil.copytree(self.path(size, seed), dest, ignore=shutil.ignore_patterns(".rendered"))
        return dest


@pytest.fixture(scope="session")
def demo_renders(tmp_path_factory) -> DemoRenders:
    return DemoRenders(tmp_path_factory.mktemp("demo-renders"))


def _promote(wh, **production: str) -> None:
    """Record `task=model_id` as each task's production model (a promotion decision), so that
    model's pseudo labels count in dataset versions."""
    import datetime as dt

    import pyarrow as pa

    from warehouse.schemas import TABLES

    rows = [
        {
            "task": task,
            "model_id": model_id,
            "promoted": True,
            "metric": "m",
            "value": 1.0,
            "production_model_id": None,
            "production_value": None,
            "dataset_version": "v-0000000000000000",
            "reason": "test",
            "decided_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        }
        for task, model_id in production.items()
    ]
    wh.append("model_promotions", pa.Table.from_pylist(rows, schema=TABLES["model_promotions"].schema))


@pytest.fixture(scope="session")
def promote():
    """`promote(wh, au="model-a", emotion="model-b")`: production models whose pseudo labels count."""
    return _promote


@pytest.fixture
def dataset_name():
    """A unique FiftyOne dataset name (the database may be shared), deleted afterwards."""
    import uuid

    import fiftyone as fo

    name = f"ferlab-test-{uuid.uuid4().hex[:8]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
