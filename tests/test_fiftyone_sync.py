"""labeling.fiftyone.sync on a small warehouse built here (FER-2013, scraped, DISFA samples,
YuNet detections and face crops), with FiftyOne's real database, and its App served once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pyarrow as pa
import pytest
import requests

from ferlab.samples.disfa import write_disfa_sample
from ferlab.samples.fer2013 import write_fer2013_sample
from ferlab.samples.scraped import write_scraped_sample
from labeling.detection.crops import GRAY_SIZE, MARGIN, crop_faces
from labeling.detection.detect import detect_files, detection_id
from labeling.detection.detectors import load_detector
from labeling.fiftyone.app import launch_review
from labeling.fiftyone.sync import SyncReport, sync_fiftyone
from warehouse.hashing import stable_id
from warehouse.schemas import TABLES
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped
from warehouse.store import Warehouse

pytestmark = pytest.mark.server  # FiftyOne's database (mongod) and App: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[1]
# Two boxes on a 48x48 FER-2013 image: one inside, one reaching past the left and bottom edges
BOX_INSIDE = (12.0, 6.0, 36.0, 42.0)  # -> [0.25, 0.125, 0.5, 0.75]
BOX_OUTSIDE = (-6.0, 24.0, 30.0, 60.0)  # clipped -> [0.0, 0.5, 0.625, 0.5]


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = TABLES[name].schema
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def _add_crops(wh: Warehouse, paths: list[Path]) -> pa.Table:
    """YuNet on the files, each face cropped as labeling.detection.crops does; returns the detections."""
    detector = load_detector("yunet")
    crops: list[dict] = []

    def on_frame(frame, found):
        made, _ = crop_faces(frame.image, found)
        for crop in made:
            det_id = detection_id(frame.image_id, found[crop.index], detector.name, detector.weights_sha256)
            rgb = cv2.imencode(".png", cv2.cvtColor(crop.rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
            gray = cv2.imencode(".png", crop.gray)[1].tobytes()
            crops.append(
                dict(
                    crop_id=stable_id(det_id, crop.rgb.shape[0], GRAY_SIZE, MARGIN),
                    image_id=frame.image_id,
                    detection_id=det_id,
                    media_path=wh.put_media(rgb, "png"),
                    gray_media_path=wh.put_media(gray, "png"),
                    size=crop.rgb.shape[0],
                    gray_size=GRAY_SIZE,
                    margin=MARGIN,
                    angle=crop.angle,
                    **crop.quality,
                )
            )

    detections, *_ = detect_files(detector, paths, on_frame=on_frame)
    wh.append("detections", detections)
    wh.append("crops", _table("crops", crops))
    return detections


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The warehouse, plus the label cases the tests check (image ids and expected labels)."""
    tmp = tmp_path_factory.mktemp("fiftyone-sync")
    src = tmp / "sources"
    wh = Warehouse(tmp / "home")
    ingest_fer2013(wh, write_fer2013_sample(src / "fer2013.csv", rows=24), show_progress=False)
    ingest_scraped(wh, write_scraped_sample(src / "scraped", broken=False), show_progress=False)
    write_disfa_sample(src / "disfa", subjects=("SN001",), frames=6)
    ingest_disfa(wh, src / "disfa", show_progress=False)

    # on the files as they came in: an image's id is the sha256 of those bytes (a photo turned
    # by its EXIF orientation is stored turned, under another hash)
    scraped = wh.sql("SELECT source_uri FROM images WHERE source = 'scraped' ORDER BY 1").column(0)
    detections = _add_crops(wh, scraped.to_pylist())

    fer = wh.sql(
        "SELECT image_id, emotion FROM emotion_labels JOIN images USING (image_id) "
        "WHERE source = 'fer2013' ORDER BY image_id"
    ).to_pylist()
    weak_loses, human_wins, boxed = fer[0], fer[1], fer[2]
    other = {e: next(x for x in ("angry", "sad", "fear") if x != e) for e in (r["emotion"] for r in fer)}
    weak_img = wh.sql(
        "SELECT image_id, emotion FROM emotion_labels WHERE label_source = 'weak' ORDER BY image_id LIMIT 1"
    ).to_pylist()[0]
    wh.append(
        "emotion_labels",
        _table(
            "emotion_labels",
            [
                # a weak label that disagrees with FER-2013's gold one: gold must stay
                dict(
                    image_id=weak_loses["image_id"],
                    emotion=other[weak_loses["emotion"]],
                    label_source="weak",
                    annotator="folder:x",
                ),
                # a curator's label beats the gold one
                dict(
                    image_id=human_wins["image_id"], emotion="surprise", label_source="human", annotator="ann"
                ),
                # a model's pseudo label beats a scraped folder's weak one
                dict(
                    image_id=weak_img["image_id"],
                    emotion="disgust",
                    label_source="pseudo",
                    confidence=0.75,
                    annotator="model-1",
                ),
            ],
        ),
    )
    # only the production model's pseudo labels count: model-1 is the emotion model in production
    wh.append(
        "model_promotions",
        _table(
            "model_promotions",
            [
                dict(
                    task="emotion",
                    model_id="model-1",
                    promoted=True,
                    metric="accuracy",
                    value=1.0,
                    dataset_version="v-0000000000000000",
                    reason="test",
                    decided_at=datetime(2026, 1, 1, tzinfo=UTC),
                )
            ],
        ),
    )
    boxes = [
        dict(
            detection_id=f"synthetic-{i}",
            image_id=boxed["image_id"],
            source_uri="test",
            width=48,
            height=48,
            label="face",
            x1=x1,
            y1=y1,
            x2=x2,
            y2=y2,
            score=0.5,
            detector="synthetic",
            weights_sha256="0" * 64,
        )
        for i, (x1, y1, x2, y2) in enumerate((BOX_INSIDE, BOX_OUTSIDE))
    ]
    wh.append("detections", _table("detections", boxes))
    frame = wh.sql(
        "SELECT image_id, au FROM au_labels WHERE NOT present ORDER BY image_id, au LIMIT 1"
    ).to_pylist()[0]
    # a model that says an AU is present where DISFA's gold label says absent: gold wins
    wh.append(
        "au_labels",
        _table(
            "au_labels",
            [
                dict(
                    **frame,
                    intensity=4.0,
                    present=True,
                    label_source="pseudo",
                    probability=0.9,
                    annotator="m",
                )
            ],
        ),
    )
    return dict(
        wh=wh,
        yunet_faces=detections.num_rows,
        weak_loses=weak_loses,
        human_wins=human_wins["image_id"],
        pseudo_wins=weak_img["image_id"],
        boxed=boxed["image_id"],
        au_absent=frame,
    )


def _by_image(name: str) -> dict:
    import fiftyone as fo

    return {s.image_id: s for s in fo.load_dataset(name)}


# ---- sync ---------------------------------------------------------------------------------------
def test_sync_mirrors_images_fields_and_best_labels(built, dataset_name):
    import fiftyone as fo

    wh = built["wh"]
    report = sync_fiftyone(wh, dataset_name)
    n = wh.count("images")
    assert report == SyncReport(added=n, updated=0, removed=0, total=n)
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent and len(ds) == n
    counts = {
        r["source"]: r["n"] for r in wh.sql("SELECT source, count(*) n FROM images GROUP BY 1").to_pylist()
    }
    assert ds.count_values("source") == counts and set(counts) == {"fer2013", "scraped", "disfa"}

    samples = _by_image(dataset_name)
    for row in wh.sql("SELECT * FROM images").to_pylist():
        s = samples[row["image_id"]]
        assert s.filepath == str(wh.path(row["media_path"])) and os.path.isabs(s.filepath)
        assert Path(s.filepath).is_file()
        for field in ("source", "subject", "split", "batch", "frame_index", "video_id"):
            assert s[field] == row[field], field
        assert (s.metadata.width, s.metadata.height) == (row["width"], row["height"])

    # best emotion label: human > gold > pseudo > weak
    gold = samples[built["weak_loses"]["image_id"]].ground_truth
    assert (gold.label, gold.label_source, gold.annotator, gold.n_labels) == (
        built["weak_loses"]["emotion"],
        "gold",
        "fer2013",
        2,
    )
    human = samples[built["human_wins"]].ground_truth
    assert (human.label, human.label_source, human.annotator) == ("surprise", "human", "ann")
    pseudo = samples[built["pseudo_wins"]].ground_truth
    assert (pseudo.label, pseudo.label_source, pseudo.confidence) == ("disgust", "pseudo", 0.75)
    labeled = set(wh.sql("SELECT DISTINCT image_id FROM emotion_labels").column(0).to_pylist())
    assert {i for i, s in samples.items() if s.ground_truth is not None} == labeled
    assert ds.match({"source": "disfa"}).count("ground_truth") == 0

    # AUs: the present ones by their best label, with intensities
    gold_aus = wh.sql(
        "SELECT image_id, au, intensity FROM au_labels WHERE present AND label_source = 'gold'"
    ).to_pylist()
    assert gold_aus, "the DISFA sample has no AU present"
    got = {(i, c.au, c.intensity) for i, s in samples.items() if s.aus for c in s.aus.classifications}
    assert got == {(r["image_id"], r["au"], r["intensity"]) for r in gold_aus}
    absent = built["au_absent"]
    aus = samples[absent["image_id"]].aus
    assert absent["au"] not in [c.au for c in (aus.classifications if aus else [])]
    some = next(c for s in samples.values() if s.aus for c in s.aus.classifications)
    assert (some.label, some.label_source, some.annotator) == (f"AU{some.au}", "gold", "disfa")
    assert "ground_truth" in ds.classes and "happy" in ds.classes["ground_truth"]


def test_detections_become_relative_boxes(built, dataset_name):
    import fiftyone as fo

    wh = built["wh"]
    sync_fiftyone(wh, dataset_name)
    ds = fo.load_dataset(dataset_name)
    samples = _by_image(dataset_name)
    boxed = samples[built["boxed"]].detections.detections
    got = {d.detection_id: (d.bounding_box, d.label, d.confidence, d.detector) for d in boxed}
    assert got == {
        "synthetic-0": ([0.25, 0.125, 0.5, 0.75], "face", 0.5, "synthetic"),
        "synthetic-1": ([0.0, 0.5, 0.625, 0.5], "face", 0.5, "synthetic"),
    }
    # YuNet's faces on the scraped images, each at its table row's place
    rows = {r["detection_id"]: r for r in wh.sql("SELECT * FROM detections").to_pylist()}
    yunet = ds.filter_labels("detections", fo.ViewField("detector") != "synthetic")
    assert yunet.count("detections.detections") == built["yunet_faces"] > 0
    for s in yunet:
        for d in s.detections.detections:
            r = rows[d.detection_id]
            assert r["image_id"] == s.image_id and d.label == r["label"] == "face"
            x, y, w, h = d.bounding_box
            assert x == pytest.approx(max(r["x1"], 0) / r["width"])
            assert y == pytest.approx(max(r["y1"], 0) / r["height"])
            assert x + w == pytest.approx(min(r["x2"], r["width"]) / r["width"])
            assert y + h == pytest.approx(min(r["y2"], r["height"]) / r["height"])
            assert d.confidence == pytest.approx(r["score"]) and d.weights_sha256 == r["weights_sha256"]


def test_face_crops_are_a_patches_field(built, dataset_name):
    import fiftyone as fo

    wh = built["wh"]
    sync_fiftyone(wh, dataset_name)
    ds = fo.load_dataset(dataset_name)
    crops = {r["crop_id"]: r for r in wh.sql("SELECT * FROM crops").to_pylist()}
    assert len(crops) == built["yunet_faces"]
    patches = ds.to_patches("face_crops")
    assert len(patches) == len(crops)
    dets = {d.detection_id: d for s in ds if s.detections for d in s.detections.detections}
    for p in patches:
        c = p.face_crops
        row = crops[c.crop_id]
        assert c.crop_path == str(wh.path(row["media_path"])) and Path(c.crop_path).is_file()
        assert c.gray_path == str(wh.path(row["gray_media_path"]))
        assert cv2.imread(c.crop_path).shape == (224, 224, 3)
        for k in ("size", "gray_size", "too_small", "too_blurry"):
            assert c[k] == row[k], k
        for k in ("margin", "angle", "face_px", "blur", "brightness"):
            assert c[k] == pytest.approx(row[k]), k
        # the crop's square holds its face's box
        x, y, w, h = c.bounding_box
        dx, dy, dw, dh = dets[c.detection_id].bounding_box
        assert x <= dx + 1e-6 and y <= dy + 1e-6 and x + w >= dx + dw - 1e-6 and y + h >= dy + dh - 1e-6
        assert w * h > dw * dh
    assert ds.count("face_crops.detections") == len(crops)


def test_resync_is_idempotent_and_follows_the_warehouse(built, dataset_name, tmp_path):
    import fiftyone as fo

    home = tmp_path / "home"
    shutil.copytree(built["wh"].home, home)
    wh = Warehouse(home)
    first = sync_fiftyone(wh, dataset_name)
    ds = fo.load_dataset(dataset_name)
    before = dict(zip(*ds.values(["image_id", "id"])))
    label_ids = sorted(ds.values("detections.detections.id", unwind=True))
    ds.match({"source": "fer2013"}).limit(2).tag_samples("reviewed")  # a curator's tags

    again = sync_fiftyone(wh, dataset_name)
    assert again == SyncReport(0, 0, 0, first.total)
    assert dict(zip(*ds.values(["image_id", "id"]))) == before
    assert sorted(ds.values("detections.detections.id", unwind=True)) == label_ids

    # a new label: that one sample is rewritten in place, tags kept
    target = built["weak_loses"]["image_id"]
    wh.append(
        "emotion_labels",
        _table(
            "emotion_labels", [dict(image_id=target, emotion="fear", label_source="human", annotator="b")]
        ),
    )
    assert sync_fiftyone(wh, dataset_name) == SyncReport(0, 1, 0, first.total)
    s = ds.one(fo.ViewField("image_id") == target)
    assert (s.id, s.ground_truth.label, s.ground_truth.label_source) == (before[target], "fear", "human")
    assert ds.count_sample_tags() == {"reviewed": 2}

    # a new batch arrives
    batch = write_scraped_sample(tmp_path / "drop", batch="batch-002", per_label=1, seed=7, broken=False)
    ingest_scraped(wh, batch, show_progress=False)
    fresh = wh.count("images") - first.total
    assert fresh > 0
    report = sync_fiftyone(wh, dataset_name)
    assert report == SyncReport(fresh, 0, 0, wh.count("images"))
    assert ds.count_values("batch")["batch-002"] == fresh
    assert len(set(ds.values("image_id"))) == len(ds)

    # images that left the warehouse go; samples added by hand (no image_id) stay
    gone = fo.Sample(filepath=str(tmp_path / "gone.png"), image_id="f" * 64, source="scraped")
    ds.add_samples([gone, fo.Sample(filepath=str(tmp_path / "mine.png"))])
    assert sync_fiftyone(wh, dataset_name) == SyncReport(0, 0, 1, wh.count("images") + 1)
    assert "f" * 64 not in ds.values("image_id")


def test_sources_scope_a_sync(built, dataset_name):
    import fiftyone as fo

    wh = built["wh"]
    fer = wh.sql("SELECT count(*) FROM images WHERE source = 'fer2013'").column(0)[0].as_py()
    assert sync_fiftyone(wh, dataset_name, sources=["fer2013"]) == SyncReport(fer, 0, 0, fer)
    report = sync_fiftyone(wh, dataset_name, sources=["scraped", "disfa"])
    assert (report.added, report.removed, report.total) == (wh.count("images") - fer, 0, wh.count("images"))
    assert sync_fiftyone(wh, dataset_name, sources=["fer2013"]) == SyncReport(0, 0, 0, wh.count("images"))
    with pytest.raises(ValueError, match="unknown sources"):
        sync_fiftyone(wh, dataset_name, sources=["affectnet"])
    # a dataset that is not the sync's is not taken over
    other = fo.Dataset(f"{dataset_name}-other")
    try:
        other.add_sample(fo.Sample(filepath="/tmp/x.png"))
        with pytest.raises(ValueError, match="not made by sync_fiftyone"):
            sync_fiftyone(wh, other.name)
    finally:
        other.delete()


def test_sync_of_thousands_of_samples_is_whole_and_idempotent(dataset_name, tmp_path):
    """Batched writes: 3,000 images with labels, AUs and boxes (rows only, no media files)."""
    import fiftyone as fo

    wh = Warehouse(tmp_path / "home")
    ids = [f"{i:064x}" for i in range(3000)]
    wh.append(
        "images",
        _table(
            "images",
            [
                dict(
                    image_id=i, source="fer2013", source_uri="t", width=48, height=48, media_path=f"m/{i}.png"
                )
                for i in ids
            ],
        ),
    )
    wh.append(
        "emotion_labels",
        _table(
            "emotion_labels",
            [dict(image_id=i, emotion="happy", label_source="gold", annotator="t") for i in ids],
        ),
    )
    wh.append(
        "au_labels",
        _table(
            "au_labels",
            [
                dict(image_id=i, au=12, intensity=3.0, present=True, label_source="gold", annotator="t")
                for i in ids
            ],
        ),
    )
    box = dict(source_uri="t", width=48, height=48, label="face", x1=4.0, y1=4.0, x2=40.0, y2=44.0, score=0.9)
    wh.append(
        "detections",
        _table(
            "detections",
            [dict(box, detection_id=f"d{i}", image_id=i, detector="t", weights_sha256="t") for i in ids],
        ),
    )
    assert sync_fiftyone(wh, dataset_name).added == len(ids)
    assert sync_fiftyone(wh, dataset_name) == SyncReport(0, 0, 0, len(ids))
    assert fo.load_dataset(dataset_name).count("detections.detections") == len(ids)


# ---- the App -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_review_needs_a_synced_dataset(dataset_name):
    with pytest.raises(LookupError, match="run the sync first"):
        launch_review(dataset_name, port=_free_port())


@pytest.mark.slow
def test_review_app_serves_http_and_stops(built, dataset_name, tmp_path):
    sync_fiftyone(built["wh"], dataset_name)
    port = _free_port()
    code = f"from labeling.fiftyone.app import launch_review; launch_review({dataset_name!r}, port={port})"
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C at the terminal goes to pytest, not to it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # minutes: CI machines are shared and slow
        while (
            b"FiftyOne App on" not in log.read_bytes() and time.monotonic() < deadline and proc.poll() is None
        ):
            time.sleep(0.25)
        assert b"FiftyOne App on" in log.read_bytes(), log.read_text(errors="replace")
        assert requests.get(f"{url}/fiftyone", timeout=10).json()["version"]
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
        with pytest.raises(requests.ConnectionError):  # the server stopped with its session
            requests.get(f"{url}/fiftyone", timeout=2)
    finally:
        if proc.poll() is None:  # FiftyOne's service watcher then stops the App's server
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
