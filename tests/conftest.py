"""Test isolation: every tool that writes under $HOME (Dagster, Ultralytics, FiftyOne) is
pointed at a throwaway folder before anything imports them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Servers the tests start are stopped with SIGTERM, which Dagster maps to its SIGINT handler. A
# pytest started as a shell's background job inherits SIGINT ignored, passes that to every child,
# and each Dagster server would then ignore SIGTERM until killed a minute later.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


_OMP_THREADS = os.environ.get("OMP_NUM_THREADS")


@pytest.fixture(autouse=True)
def _child_processes_keep_their_threads():
    """A test importing ultralytics itself (not through labeling.detection.yolo_env) leaves
    OMP_NUM_THREADS=1 behind, and every process the suite starts afterwards (the demo, the CLI,
    Dagster's workers) would train on one thread."""
    yield
    if _OMP_THREADS is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = _OMP_THREADS


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


class SharedRoot:
    """A data root built once per test run. `home` is shared: read it, never write under it;
    `copy` gives a private one to write in."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def copy(self, dest: Path) -> Path:
        """A private copy of the data root at `dest` (a new folder); returns `dest`. Without the
        root's FiftyOne database (`fiftyone/`, mostly mongod's journal): a dataset belongs to the
        root that synced it, and a copy syncs its own."""
        home = self.home
        shutil.copytree(
            home, dest, symlinks=True, ignore=lambda d, _: ["fiftyone"] if Path(d) == home else []
        )
        return dest


class DemoRoot(SharedRoot):
    """A data root made by `ferlab demo` (the small demo, seed 0: every ingest and auto-labeling
    job, the AU and emotion models trained, promoted and evaluated, pseudo labels, the review
    queue, the video analysis)."""

    def __init__(self, home: Path, stdout: str) -> None:
        super().__init__(home)
        self.stdout = stdout  # what `ferlab demo` printed


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory, demo_renders) -> DemoRoot:
    """`ferlab demo` in a subprocess, as a user runs it (DAGSTER_HOME left to the data root), on a
    copy of the session's render of the same demo data (rendering is the costly part)."""
    home = tmp_path_factory.mktemp("demo-root") / "var"
    demo_renders.copy(home / "sources")
    env = {**os.environ, "FERLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    # as `make` sets them: <data root>/dagster and <data root>/fiftyone, prepared by ferlab
    env.pop("DAGSTER_HOME", None)
    env.pop("FIFTYONE_DATABASE_DIR", None)
    demo = subprocess.run(
        [sys.executable, "-m", "ferlab", "--home", str(home), "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    (home.parent / "demo.log").write_text(demo.stdout + demo.stderr)  # the whole story, for a failure
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return DemoRoot(home, demo.stdout)


class Fer2013Root(SharedRoot):
    """The small demo's FER-2013 faces (train / val / test from its Usage column) ingested,
    auto-labeled and snapshotted; each module takes its own `copy`."""

    def __init__(self, home: Path, version: str) -> None:
        super().__init__(home)
        self.version = version


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


class FaceDetectorRoot:
    """The small demo ingested through Dagster (YuNet), the `face_detector` asset's YOLO student
    trained on it (through `face_detector_job`), then everything ingested again with the `auto`
    detector, the student now: once per test run, the one trained YOLO student of the suite."""

    INGEST_STRIDE = 8  # every 8th DISFA frame: 8 per subject of the "small" demo's 15 x 64
    # Started from the packaged COCO YOLO11n (the asset's default), 20 epochs at 160 px in steps
    # of 8 images.
    EPOCHS = 20
    IMGSZ = 160
    BATCH = 8

    def __init__(self, home: Path, result, seconds: float, spec_before: str, spec_after: str, again: list):
        self.home, self.result, self.seconds = home, result, seconds
        self.spec_before, self.spec_after, self.again = spec_before, spec_after, again

    @staticmethod
    def execute(instance, job: str, partition: str | None = None, run_config: dict | None = None):
        from dagster_project.definitions import defs
        from ferlab.demo import QUIET

        return defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            run_config={**QUIET, **(run_config or {})},
        )

    @classmethod
    def ingest_all(cls, instance, home: Path, detector_spec: str | None = None) -> list:
        from warehouse.sources.disfa import find_disfa_subjects
        from warehouse.sources.scraped import find_scraped_batches

        resources: dict = {"sources": {"config": {"disfa_stride": cls.INGEST_STRIDE}}}
        if detector_spec:
            resources["detector"] = {"config": {"spec": detector_spec}}
        results = []
        for partitions, job, keys in (
            ("disfa_subjects", "disfa_ingest_job", find_disfa_subjects(home / "sources" / "disfa")),
            ("scraped_batches", "scraped_ingest_job", find_scraped_batches(home / "sources" / "scraped")),
        ):
            instance.add_dynamic_partitions(partitions, keys)
            results += [cls.execute(instance, job, key, {"resources": resources}) for key in keys]
        return results


@pytest.fixture(scope="session")
def face_detector_root(tmp_path_factory, demo_renders) -> FaceDetectorRoot:
    import time

    from dagster import DagsterInstance

    from assets.resources import DetectorResource

    home = tmp_path_factory.mktemp("face_detector") / "var"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERLAB_HOME", str(home))
        demo_renders.copy(home / "sources")
        instance = DagsterInstance.ephemeral()
        # The first ingestion with YuNet alone: its boxes are not what the tests check, and the
        # person teacher on every frame would double the time. The asset labels with both teachers.
        assert all(r.success for r in FaceDetectorRoot.ingest_all(instance, home, detector_spec="yunet"))
        before = DetectorResource().resolve_spec(home)
        started = time.perf_counter()
        config = {
            "epochs": FaceDetectorRoot.EPOCHS,
            "imgsz": FaceDetectorRoot.IMGSZ,
            "batch": FaceDetectorRoot.BATCH,
            "disfa_stride": 1,  # the ingestion kept every 8th frame already
            "max_images": 400,
            "device": "cpu",
        }
        result = FaceDetectorRoot.execute(
            instance, "face_detector_job", run_config={"ops": {"face_detector": {"config": config}}}
        )
        seconds = time.perf_counter() - started
        after = DetectorResource().resolve_spec(home)
        # Again, with the `auto` detector: the student now. Images are stored: only detection runs.
        again = FaceDetectorRoot.ingest_all(instance, home)
    return FaceDetectorRoot(home, result, seconds, before, after, again)


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

    from labeling.fiftyone.sync import import_fiftyone

    fo = import_fiftyone()  # this process's own database, never another session's service
    name = f"ferlab-test-{uuid.uuid4().hex[:8]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def hand_made_production_model(
    wh,
    task: str,
    model_id: str,
    probabilities: dict[str, dict[str, float]],
    decided_at=None,
) -> str:
    """A promoted model of `task` as training, evaluation and a prediction run leave it, without
    weights: run.json, out-of-fold predictions that separate every label perfectly (AUs: 0.9 on
    the positives, 0.1 on the negatives, so the cuts are 0.9 / 0.1; emotions: 0.8 on the true
    class, so each class's cut is 0.8), a prediction cache holding `probabilities` (crop_id ->
    label -> probability; image_id "I-<crop_id>") and the promotion."""
    import datetime as dt
    import json

    import numpy as np
    import pyarrow as pa

    from models.pipeline import model_dir
    from models.predictions import FoldPredictions, save_predictions
    from models.tasks import get_task
    from warehouse.schemas import TABLES

    labels = get_task(task).labels
    out = model_dir(wh, task, model_id)
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"dataset_version": "v-0000000000000000"}))
    n = 14 * len(labels)
    if task == "au":
        y = (np.arange(n)[:, None] + np.arange(len(labels))) % 2 == 0
        prob = np.where(y, 0.9, 0.1)
    else:
        y = np.arange(n) % len(labels)
        prob = np.full((n, len(labels)), 0.2 / (len(labels) - 1))
        prob[np.arange(n), y] = 0.8
    save_predictions(out / "predictions.npz", [FoldPredictions(0, labels, y, prob, None, ["g"])])
    ids = sorted(probabilities)
    cache = pa.table(
        {
            "crop_id": ids,
            "image_id": [f"I-{c}" for c in ids],
            **{lab: pa.array([probabilities[c].get(lab, 0.0) for c in ids], pa.float32()) for lab in labels},
        }
    )
    (wh.home / "predictions").mkdir(exist_ok=True)
    pa.parquet.write_table(cache, wh.home / "predictions" / f"{model_id}-0123456789abcdef.parquet")
    row = dict(
        task=task,
        model_id=model_id,
        promoted=True,
        metric="m",
        value=1.0,
        dataset_version="v-0000000000000000",
        reason="test",
        decided_at=decided_at or dt.datetime.now(dt.UTC),
    )
    schema = TABLES["model_promotions"].schema
    wh.append("model_promotions", pa.table({f.name: [row.get(f.name)] for f in schema}, schema=schema))
    return model_id
