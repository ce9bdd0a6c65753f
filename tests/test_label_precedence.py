"""One label precedence (warehouse.precedence) for every reader: the dataset manifest
(warehouse.versions) and the FiftyOne view (labeling.fiftyone.docs) pick the same emotion and
the same AU labels of each image, and the ones human > gold > pseudo > weak says, by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from labeling.fiftyone.docs import read_warehouse
from warehouse import Warehouse
from warehouse.hashing import stable_id
from warehouse.schemas import DISFA_AUS, TABLES
from warehouse.versions import build_manifest


def _table(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[name].schema)


def _image(image_id: str) -> tuple[dict, dict, dict]:
    image = {
        "image_id": image_id,
        "source": "scraped",
        "source_uri": f"/in/{image_id}.jpg",
        "subject": None,
        "video_id": None,
        "frame_index": None,
        "split": None,
        "batch": "b1",
        "width": 640,
        "height": 480,
        "media_path": f"media/{image_id}.jpg",
        "phash": None,
    }
    det_id = stable_id(image_id, "yunet")
    det = {
        "detection_id": det_id,
        "image_id": image_id,
        "source_uri": image["source_uri"],
        "frame_index": None,
        "width": 640,
        "height": 480,
        "label": "face",
        "x1": 10.0,
        "y1": 10.0,
        "x2": 110.0,
        "y2": 110.0,
        "score": 0.9,
        "detector": "yunet",
        "weights_sha256": "w",
    }
    crop = {
        "crop_id": f"c-{image_id}",
        "image_id": image_id,
        "detection_id": det_id,
        "media_path": f"media/c-{image_id}.jpg",
        "gray_media_path": f"media/c-{image_id}.png",
        "size": 224,
        "gray_size": 48,
        "margin": 0.25,
        "angle": 0.0,
        "face_px": 100.0,
        "blur": 100.0,
        "brightness": 120.0,
        "too_small": False,
        "too_blurry": False,
    }
    return image, det, crop


def _emotion(image_id, emotion, source, annotator, confidence=None) -> dict:
    return {
        "image_id": image_id,
        "emotion": emotion,
        "label_source": source,
        "confidence": confidence,
        "annotator": annotator,
    }


def _au(image_id, au, present, source, annotator, probability=None) -> dict:
    return {
        "image_id": image_id,
        "au": au,
        "intensity": None,
        "present": present,
        "label_source": source,
        "probability": probability,
        "annotator": annotator,
    }


EMOTIONS = [
    # every source at once: gold beats the more confident pseudo and weak labels
    _emotion("I1", "happy", "weak", "folder:happy", 0.99),
    _emotion("I1", "sad", "pseudo", "model-y", 0.95),
    _emotion("I1", "angry", "gold", "fer2013"),
    _emotion("I2", "happy", "gold", "fer2013"),
    _emotion("I2", "fear", "human", "alice"),  # human beats gold
    _emotion("I3", "sad", "pseudo", "model-z", 0.6),  # model-z is not the production model
    _emotion("I3", "happy", "pseudo", "model-y", 0.9),
    _emotion("I4", "neutral", "pseudo", "model-z", 0.99),  # not production: ignored, however sure
    _emotion("I4", "surprise", "pseudo", "model-y", 0.2),
    _emotion("I5", "disgust", "weak", "folder:disgust"),
    _emotion("I6", "sad", "gold", "rater-b"),
    _emotion("I6", "happy", "gold", "rater-a"),  # a tie: the annotator's name decides
]
AUS = [
    _au("I1", 12, True, "weak", "folder", 0.9),
    _au("I1", 12, False, "gold", "disfa"),  # gold says absent: absent
    _au("I1", 1, True, "pseudo", "model-m", 0.9),  # model-m is not the production model
    _au("I1", 1, False, "pseudo", "model-n", 0.8),
    _au("I2", 6, True, "human", "bob"),
    _au("I2", 6, False, "gold", "disfa"),  # human beats gold: present
    _au("I3", 25, True, "pseudo", "model-a", None),  # not production
    _au("I3", 25, False, "pseudo", "model-n", 0.1),
]
EXPECTED_EMOTION = {
    "I1": "angry",
    "I2": "fear",
    "I3": "happy",
    "I4": "surprise",
    "I5": "disgust",
    "I6": "happy",
}
EXPECTED_PRESENT = {"I1": set(), "I2": {6}, "I3": set(), "I4": set(), "I5": set(), "I6": set()}


@pytest.fixture(scope="module")
def wh(tmp_path_factory, promote) -> Warehouse:
    wh = Warehouse(tmp_path_factory.mktemp("precedence"))
    images, dets, crops = zip(*(_image(f"I{n}") for n in range(1, 7)))
    wh.append("images", _table("images", list(images)))
    wh.append("detections", _table("detections", list(dets)))
    wh.append("crops", _table("crops", list(crops)))
    wh.append_labels("emotion_labels", _table("emotion_labels", EMOTIONS))
    wh.append_labels("au_labels", _table("au_labels", AUS))
    promote(wh, emotion="model-y", au="model-n")  # the production models: their pseudo labels alone count
    return wh


def test_the_manifest_follows_the_precedence(wh):
    rows = {r["image_id"]: r for r in build_manifest(wh).to_pylist()}
    assert {i: r["emotion"] for i, r in rows.items()} == EXPECTED_EMOTION
    present = {i: {n for n in DISFA_AUS if r[f"au{n}"]} for i, r in rows.items()}
    assert present == EXPECTED_PRESENT


def test_fiftyone_shows_what_the_manifest_holds(wh):
    manifest = {r["image_id"]: r for r in build_manifest(wh).to_pylist()}
    shown = read_warehouse(wh)
    assert set(shown) == set(manifest)
    for image_id, im in shown.items():
        emotion, label_source, *_ = im.ground_truth
        assert (emotion, label_source) == (
            manifest[image_id]["emotion"],
            manifest[image_id]["emotion_source"],
        )
        present = {au for au, *_ in im.aus or []}
        assert present == {n for n in DISFA_AUS if manifest[image_id][f"au{n}"]}, image_id
