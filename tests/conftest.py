"""Test isolation: every tool that writes under $HOME (Dagster, Ultralytics, FiftyOne) is
pointed at a throwaway folder before anything imports them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


REPO = Path(__file__).resolve().parents[1]


class DemoRoot:
    """A data root made by `ferlab demo` (the small demo, seed 0: every ingest and auto-labeling
    job, the AU and emotion models trained, promoted and evaluated, pseudo labels, the review
    queue, the video analysis), once per test run. `home` is shared: read it, never write under
    it; `copy` gives a private one to write in."""

    def __init__(self, home: Path, stdout: str) -> None:
        self.home = home
        self.stdout = stdout  # what `ferlab demo` printed

    def copy(self, dest: Path) -> Path:
        """A private copy of the data root at `dest` (a new folder); returns `dest`."""
        shutil.copytree(self.home, dest, symlinks=True)
        return dest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory, demo_renders) -> DemoRoot:
    """`ferlab demo` in a subprocess, as a user runs it (DAGSTER_HOME left to the data root), on a
    copy of the session's render of the same demo data (rendering is the costly part)."""
    home = tmp_path_factory.mktemp("demo-root") / "var"
    demo_renders.copy(home / "sources")
    env = {**os.environ, "FERLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("DAGSTER_HOME", None)  # as `make` sets it: <data root>/dagster, prepared by ferlab
    demo = subprocess.run(
        [sys.executable, "-m", "ferlab", "--home", str(home), "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return DemoRoot(home, demo.stdout)


class Fer2013Root:
    """The small demo's FER-2013 faces (train / val / test from its Usage column) ingested,
    auto-labeled and snapshotted, once per test run; `copy` gives each module its own."""

    def __init__(self, home: Path, version: str) -> None:
        self.home = home
        self.version = version

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.home, dest, symlinks=True)
        return dest


@pytest.fixture(scope="session")
def fer2013_root(tmp_path_factory, demo_renders) -> Fer2013Root:
    from labeling.detection.autolabel import autolabel, select_images
    from labeling.detection.detectors import load_detector
    from warehouse import Warehouse
    from warehouse.sources.fer2013 import ingest_fer2013
    from warehouse.versions import snapshot_dataset_version

    wh = Warehouse(tmp_path_factory.mktemp("fer2013-root") / "home")
    ingest_fer2013(wh, demo_renders.path("small", seed=0) / "fer2013.csv", show_progress=False)
    autolabel(wh, select_images(wh), load_detector("yunet"), show_progress=False)
    return Fer2013Root(wh.home, snapshot_dataset_version(wh).version)


ANALYSIS_SUBJECTS = ["SN001", "SN002", "SN003"]


@pytest.fixture(scope="session")
def analysis_home(tmp_path_factory, demo_renders, promote) -> Path:
    """Three demo people's DISFA frames (every 2nd) and the FER-2013 faces ingested, auto-labeled
    by YuNet, snapshotted; a tiny AU model and a tiny emotion model trained on them and made
    production: the data root of the video analysis tests (models' quality is not under test)."""
    from ferlab.demotruth import ingest_demo_sources
    from models.pipeline import train_model
    from models.settings import AUTrainingSettings, EmotionTrainingSettings
    from warehouse import Warehouse

    root = tmp_path_factory.mktemp("analyze") / "home"
    wh = Warehouse(root)
    sources = demo_renders.path("small", seed=0)
    version = ingest_demo_sources(wh, sources, subjects=ANALYSIS_SUBJECTS, stride=2, scraped=False)
    au = train_model(wh, version, AUTrainingSettings(image_size=64, head_epochs=3, finetune_epochs=0))
    emo = train_model(
        wh, version, EmotionTrainingSettings(architecture="fer2013_cnn", scratch_epochs=3, folds=0)
    )
    _promote(wh, au=au.model_id, emotion=emo.model_id)
    return root


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
