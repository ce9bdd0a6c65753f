"""Auto-labeling streams: rows are stored per chunk, a killed run resumes where it stopped, and
images the same detector has finished (faces found or not) are neither decoded nor detected again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.demo import write_sample_sources
from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from labeling.detection.settings import AutoLabelSettings
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped

REPO = Path(__file__).resolve().parents[1]
SMALL = AutoLabelSettings(commit_every=16, batch_size=4)  # many chunks out of the sample's images
# Rows that must come out of a resumed run exactly as out of an uninterrupted one (rejects: their
# ids, the time they were seen differs).
TABLES = {
    "detections": "SELECT * FROM detections ORDER BY detection_id",
    "crops": "SELECT * FROM crops ORDER BY crop_id",
    "autolabel_done": "SELECT * FROM autolabel_done ORDER BY image_id, detector, margin",
    "rejects": "SELECT reject_id FROM rejects WHERE source = 'labeling' ORDER BY reject_id",
}


class Counting:
    """A detector as another one, counting the frames it is given; raises once it has seen
    `fail_after` (a run dying midway), or names another detector (`name`: a merged one)."""

    def __init__(self, inner, fail_after: int | None = None, name: str | None = None):
        self.inner, self.fail_after, self.frames = inner, fail_after, 0
        self.name = name or inner.name
        self.weights_sha256 = "merged" if name else inner.weights_sha256
        self.named = name is not None

    def detect(self, images):
        if self.fail_after is not None and self.frames + len(images) > self.fail_after:
            raise RuntimeError("killed")
        self.frames += len(images)
        found = self.inner.detect(images)
        if self.named:  # like the teachers: each box names the model that found it, not the run's
            for boxes in found:
                for d in boxes:
                    d.detector, d.weights_sha256 = self.inner.name, self.inner.weights_sha256
        return found


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """The sample sources ingested (not labeled), with a batch of scraped images without a face."""
    root = tmp_path_factory.mktemp("autolabel-resume")
    sources = root / "sources"
    write_sample_sources(sources)
    faceless = sources / "faceless"
    faceless.mkdir()
    rng = np.random.default_rng(0)
    for n in range(3):
        cv2.imwrite(str(faceless / f"empty_{n}.png"), rng.integers(0, 256, (96, 128, 3), np.uint8))
    wh = Warehouse(root / "home")
    ingest_fer2013(wh, sources / "fer2013.csv", show_progress=False)
    ingest_disfa(wh, sources / "disfa", subjects=["SN001"], show_progress=False)
    ingest_scraped(wh, sources / "scraped" / "batch-001", show_progress=False)
    ingest_scraped(wh, faceless, show_progress=False)
    return root / "home"


def _copy(ingested: Path, tmp_path: Path) -> Warehouse:
    shutil.copytree(ingested, tmp_path / "home")
    return Warehouse(tmp_path / "home")


def _rows(wh: Warehouse) -> dict[str, list[dict]]:
    return {name: wh.sql(query).to_pylist() for name, query in TABLES.items()}


@pytest.fixture(scope="module")
def reference(ingested, tmp_path_factory) -> dict[str, list[dict]]:
    """The tables of one uninterrupted run over the sample, in chunks."""
    wh = _copy(ingested, tmp_path_factory.mktemp("reference"))
    report = autolabel(wh, select_images(wh), load_detector("yunet"), SMALL)
    assert report.chunks > 3 and report.detections == wh.count("detections")
    return _rows(wh)


def _detected_images(wh: Warehouse) -> int:
    return wh.sql("SELECT count(*) AS n FROM images WHERE source <> 'fer2013'").column("n")[0].as_py()


def test_commit_every_is_a_validated_setting():
    with pytest.raises(ConfigError, match="commit_every"):
        AutoLabelSettings(commit_every=0)


def test_rows_are_stored_per_chunk(ingested, tmp_path, monkeypatch, reference):
    wh = _copy(ingested, tmp_path)
    sizes: dict[str, list[int]] = {}
    append = Warehouse.append

    def recording(self, name, rows):
        sizes.setdefault(name, []).append(rows.num_rows)
        return append(self, name, rows)

    monkeypatch.setattr(Warehouse, "append", recording)
    report = autolabel(wh, select_images(wh), load_detector("yunet"), SMALL)
    images = wh.count("images")
    assert sizes["autolabel_done"] == [SMALL.commit_every] * (images // 16) + [images % 16]
    assert max(sizes["detections"]) <= 2 * SMALL.commit_every  # a chunk's boxes, not the run's
    assert report.chunks == len(sizes["autolabel_done"]) and report.frames == images
    assert report.added == {
        "detections": report.detections,
        "rejects": 0,
        "crops": report.crops,
        "autolabel_done": images,
    }
    assert report.frames_without_face == 3 and "0 images skipped" in report.summary()
    assert _rows(wh) == reference


def test_a_second_run_decodes_and_detects_nothing(ingested, tmp_path, monkeypatch, reference):
    wh = _copy(ingested, tmp_path)
    images = select_images(wh)
    autolabel(wh, images, load_detector("yunet"), SMALL)
    # images without a face leave no detections row: autolabel_done says they were done
    empty = wh.sql(
        "SELECT a.image_id FROM autolabel_done a ANTI JOIN detections d USING (image_id) WHERE a.detections = 0"
    )
    assert empty.num_rows == 3
    decoded = []
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a: decoded.append(a[0]) or imread(*a))
    detector = Counting(load_detector("yunet"))
    again = autolabel(wh, images, detector, SMALL)
    assert (detector.frames, decoded, again.frames) == (0, [], 0)
    assert again.skipped == images.num_rows and f"{images.num_rows} images skipped" in again.summary()
    assert again.added == dict.fromkeys(again.added, 0)
    assert _rows(wh) == reference
    # another margin makes other crops: the detector's images are done again, FER-2013's are not
    wider = autolabel(wh, images, detector, SMALL.replace(margin=0.4))
    assert detector.frames == wider.frames == _detected_images(wh)
    assert wider.skipped == images.num_rows - _detected_images(wh)


def test_a_killed_run_resumes_where_it_stopped(ingested, tmp_path, reference):
    wh = _copy(ingested, tmp_path)
    images = select_images(wh)
    dying = Counting(load_detector("yunet"), fail_after=30)  # after the FER-2013 images, midway
    with pytest.raises(RuntimeError, match="killed"):
        autolabel(wh, images, dying, SMALL)
    finished = wh.count("autolabel_done")
    assert images.num_rows - _detected_images(wh) < finished < images.num_rows
    detector = Counting(load_detector("yunet"))
    resumed = autolabel(wh, images, detector, SMALL)
    assert resumed.skipped == finished and resumed.frames == images.num_rows - finished
    assert detector.frames == images.num_rows - finished < _detected_images(wh)
    assert _rows(wh) == reference  # the same rows, none twice


_KILLED_BETWEEN_APPENDS = """
import os, signal, sys
from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from labeling.detection.settings import AutoLabelSettings
from warehouse import Warehouse

append = Warehouse.append
seen = []

def dies_after_the_second_chunks_detections(self, name, rows):
    added = append(self, name, rows)
    seen.append(name)
    if seen.count("detections") == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return added

Warehouse.append = dies_after_the_second_chunks_detections
wh = Warehouse(sys.argv[1])
autolabel(wh, select_images(wh, source="disfa"), load_detector("yunet"), AutoLabelSettings(commit_every=16))
"""


def test_a_run_killed_between_detections_and_crops_completes_the_crops(ingested, tmp_path, reference):
    wh = _copy(ingested, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = textwrap.dedent(_KILLED_BETWEEN_APPENDS)
    run = subprocess.run([sys.executable, "-c", script, str(wh.home)], cwd=REPO, env=env, capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    uncropped = "SELECT count(*) AS n FROM detections d ANTI JOIN crops c USING (detection_id)"
    assert wh.sql(uncropped).column("n")[0].as_py() == 16  # the second chunk's boxes, no crops
    assert wh.count("autolabel_done") == 16
    images = select_images(wh, source="disfa")
    resumed = autolabel(wh, images, load_detector("yunet"), AutoLabelSettings(commit_every=16))
    assert (resumed.skipped, resumed.frames) == (16, images.num_rows - 16)
    assert wh.sql(uncropped).column("n")[0].as_py() == 0
    ids = set(images.column("image_id").to_pylist())
    assert _rows(wh) == {
        name: [r for r in rows if name == "rejects" or r["image_id"] in ids]
        for name, rows in reference.items()
    }


def test_images_labeled_before_autolabel_done_are_skipped_and_marked(ingested, tmp_path, reference):
    wh = _copy(ingested, tmp_path)
    images = select_images(wh)
    autolabel(wh, images, load_detector("yunet"), SMALL)
    for part in wh.parts("autolabel_done"):  # a root labeled before the table existed
        if not part.name.startswith("part-0-schema"):
            part.unlink()
    detector = Counting(load_detector("yunet"))
    again = autolabel(wh, images, detector, SMALL)
    # their detections and crops say the images with a face are done; those without are redone
    assert detector.frames == again.frames == 3
    assert _rows(wh) == reference


def test_a_merged_detector_is_not_done_by_one_of_its_models_alone(ingested, tmp_path):
    wh = _copy(ingested, tmp_path)
    images = select_images(wh, source="disfa")
    autolabel(wh, images, load_detector("yunet"), SMALL)
    merged = Counting(load_detector("yunet"), name="teachers:fake")
    report = autolabel(wh, images, merged, SMALL)
    assert merged.frames == report.frames == images.num_rows and report.added["detections"] == 0
    again = Counting(load_detector("yunet"), name="teachers:fake")
    assert autolabel(wh, images, again, SMALL).skipped == images.num_rows and again.frames == 0


def test_unreadable_media_is_not_done_and_is_tried_again(ingested, tmp_path):
    wh = _copy(ingested, tmp_path)
    images = select_images(wh, source="scraped")
    lost = images.column("media_path")[0].as_py()
    wh.path(lost).unlink()
    first = autolabel(wh, images, load_detector("yunet"), SMALL)
    second = autolabel(wh, images, load_detector("yunet"), SMALL)
    assert [r.detail for r in first.rejects] == [r.detail for r in second.rejects] == [lost]
    assert second.skipped == images.num_rows - 1 and second.added["rejects"] == 0
