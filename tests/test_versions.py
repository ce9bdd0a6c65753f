"""Dataset versions: label precedence, one-face rules, splits, content-hash ids, idempotent
snapshots; and the manifest of the data root `ferlab demo` builds."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from warehouse import Warehouse
from warehouse.hashing import stable_id
from warehouse.schemas import AU_COLUMNS, TABLES
from warehouse.versions import (
    MANIFEST_SCHEMA,
    UnknownDatasetVersion,
    build_manifest,
    group_split,
    list_versions,
    read_manifest,
    snapshot_dataset_version,
    version_id,
)


# ---- a small warehouse, by hand ------------------------------------------------------------
def _table(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[name].schema)


def _image(image_id, source, split=None, subject=None, batch=None) -> dict:
    return {
        "image_id": image_id,
        "source": source,
        "source_uri": f"/in/{image_id}",
        "subject": subject,
        "video_id": f"{subject}_left" if subject else None,
        "frame_index": 1 if subject else None,
        "split": split,
        "batch": batch,
        "width": 640,
        "height": 480,
        "media_path": f"media/{image_id}.png",
        "phash": None,
    }


def _face(image_id, n=0, face_px=100.0, detector="yunet", blurry=False) -> tuple[dict, dict]:
    det_id = stable_id(image_id, detector, n)
    det = {
        "detection_id": det_id,
        "image_id": image_id,
        "source_uri": f"/in/{image_id}",
        "frame_index": None,
        "width": 640,
        "height": 480,
        "label": "face",
        "x1": 10.0 * n,
        "y1": 0.0,
        "x2": 10.0 * n + face_px,
        "y2": face_px,
        "score": 0.9,
        "detector": detector,
        "weights_sha256": "w",
    }
    crop = {
        "crop_id": f"c-{image_id}-{detector}-{n}",
        "image_id": image_id,
        "detection_id": det_id,
        "media_path": f"media/{image_id}-{detector}-{n}.jpg",
        "gray_media_path": f"media/{image_id}-{detector}-{n}.png",
        "size": 224,
        "gray_size": 48,
        "margin": 0.25,
        "angle": 0.0,
        "face_px": face_px,
        "blur": 10.0 if blurry else 100.0,
        "brightness": 120.0,
        "too_small": False,
        "too_blurry": blurry,
    }
    return det, crop


def _emotion(image_id, emotion, source, annotator, confidence=None) -> dict:
    return {
        "image_id": image_id,
        "emotion": emotion,
        "label_source": source,
        "confidence": confidence,
        "annotator": annotator,
    }


def _au(image_id, au, present, source="gold", annotator="disfa", probability=None) -> dict:
    return {
        "image_id": image_id,
        "au": au,
        "intensity": (3.0 if present else 0.0) if source == "gold" else None,
        "present": present,
        "label_source": source,
        "probability": probability,
        "annotator": annotator,
    }


def _fill(wh: Warehouse) -> None:
    images = [
        _image("F1", "fer2013", "train", batch="fer.csv"),
        _image("F2", "fer2013", "val", batch="fer.csv"),
        _image("F3", "fer2013", None, batch="fer.csv"),  # no Usage: split by its group's hash
        _image("F4", "fer2013", "test", batch="fer.csv"),
        _image("D1", "disfa", subject="SN001", batch="SN001"),
        _image("D2", "disfa", subject="SN001", batch="SN001"),
        _image("D3", "disfa", subject="SN002", batch="SN002"),
        _image("S1", "scraped", batch="b1"),
        _image("S2", "scraped", batch="b1"),
        _image("S3", "scraped", batch="b1"),
        _image("S4", "scraped", batch="b2"),
        _image("S5", "scraped", batch="b2"),
    ]
    faces = [
        _face("F1"),
        _face("F2"),
        _face("F3"),
        _face("F4", blurry=True),  # FER-2013 is exempt from the quality flags
        _face("D1", face_px=200.0),
        _face("D2", 0, face_px=80.0),  # a second, smaller "face" on a one-face frame: dropped
        _face("D2", 1, face_px=220.0),
        _face("D3", blurry=True),  # flagged: out unless include_flagged
        _face("S1"),
        _face("S2", 0),  # a group photo: the folder label says nothing about either face
        _face("S2", 1),
        _face("S3"),
        _face("S4", detector="yunet"),  # the same face found by two detectors:
        _face("S4", detector="yolo-student"),  # one face per crop set, both labeled
        _face("S5"),
    ]
    emotions = [
        _emotion("F1", "happy", "gold", "fer2013"),
        _emotion("F1", "sad", "human", "alice"),  # human wins over gold
        _emotion("F2", "angry", "gold", "fer2013"),
        _emotion("F3", "fear", "gold", "fer2013"),
        _emotion("F4", "surprise", "gold", "fer2013"),
        _emotion("S1", "happy", "weak", "folder:happy"),
        _emotion("S1", "angry", "pseudo", "model-a", 0.6),
        _emotion("S1", "sad", "pseudo", "model-b", 0.9),  # pseudo wins over weak; most confident
        _emotion("S2", "happy", "weak", "folder:happy"),
        _emotion("S3", "neutral", "weak", "folder:neutral"),
        _emotion("S4", "surprise", "weak", "folder:surprise"),
        _emotion("S5", "fear", "pseudo", "model-b", 0.7),
        _emotion("S5", "disgust", "pseudo", "model-a", 0.7),  # model-a is not the production model
        _emotion("S5", "happy", "pseudo", "model-0", None),  # no confidence ranks last
    ]
    aus = [
        _au("D1", 1, True),
        _au("D1", 2, False),
        _au("D1", 12, False),
        _au("D1", 12, True, "human", "bob"),  # overrides AU12 only
        _au("D1", 43, True),  # not one of DISFA's 12: ignored
        *(_au("D2", n, n == 25) for n in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)),
        _au("D3", 1, True),
        _au("S3", 6, True, "pseudo", "model-a", 0.8),
        _au("S3", 12, False, "pseudo", "model-a", 0.1),
        _au("S2", 12, True, "pseudo", "model-a", 0.9),  # two faces: not copied
    ]
    dets, crops = zip(*faces)
    assert wh.append("images", _table("images", images)) == len(images)
    wh.append("detections", _table("detections", list(dets)))
    wh.append("crops", _table("crops", list(crops)))
    wh.append("emotion_labels", _table("emotion_labels", emotions))
    wh.append("au_labels", _table("au_labels", aus))


@pytest.fixture
def filled(wh, promote):
    _fill(wh)
    # only the production model's pseudo labels count: model-b for emotions, model-a for AUs
    promote(wh, emotion="model-b", au="model-a")
    return wh


def _by_crop(manifest: pa.Table) -> dict[str, dict]:
    return {r["crop_id"]: r for r in manifest.to_pylist()}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ---- the manifest --------------------------------------------------------------------------
def test_precedence_faces_and_flags(filled):
    before = _files(filled.home)
    m = build_manifest(filled)
    assert _files(filled.home) == before  # building reads only
    assert m.schema.equals(MANIFEST_SCHEMA)
    assert m.column("crop_id").to_pylist() == sorted(m.column("crop_id").to_pylist())
    rows = _by_crop(m)
    assert set(rows) == {
        "c-F1-yunet-0",
        "c-F2-yunet-0",
        "c-F3-yunet-0",
        "c-F4-yunet-0",
        "c-D1-yunet-0",
        "c-D2-yunet-1",
        "c-S1-yunet-0",
        "c-S2-yunet-0",
        "c-S2-yunet-1",
        "c-S3-yunet-0",
        "c-S4-yunet-0",
        "c-S4-yolo-student-0",
        "c-S5-yunet-0",
    }
    # emotions: human > gold, pseudo > weak, most confident, then annotator name
    assert (rows["c-F1-yunet-0"]["emotion"], rows["c-F1-yunet-0"]["emotion_source"]) == ("sad", "human")
    assert (rows["c-F2-yunet-0"]["emotion"], rows["c-F2-yunet-0"]["emotion_source"]) == ("angry", "gold")
    assert (rows["c-S1-yunet-0"]["emotion"], rows["c-S1-yunet-0"]["emotion_source"]) == ("sad", "pseudo")
    assert (rows["c-S3-yunet-0"]["emotion"], rows["c-S3-yunet-0"]["emotion_source"]) == ("neutral", "weak")
    assert rows["c-S5-yunet-0"]["emotion"] == "fear"  # model-a's pseudo label does not count
    assert rows["c-F4-yunet-0"]["emotion"] == "surprise"
    # the group photo keeps both faces, with no label of the image
    for crop in ("c-S2-yunet-0", "c-S2-yunet-1"):
        assert rows[crop]["emotion"] is None and rows[crop]["emotion_source"] is None
        assert rows[crop]["au12"] is None and rows[crop]["au_source"] is None
    # a face seen by two detectors is one face in each crop set
    assert rows["c-S4-yunet-0"]["emotion"] == rows["c-S4-yolo-student-0"]["emotion"] == "surprise"
    # AUs per AU: the human AU12 overrides gold, the other gold AUs stay, unlabeled AUs are null
    d1 = rows["c-D1-yunet-0"]
    assert (d1["au1"], d1["au2"], d1["au12"], d1["au4"]) == (True, False, True, None)
    assert d1["au_source"] == "gold"  # the weakest source among the row's AUs
    assert d1["emotion"] is None
    d2 = rows["c-D2-yunet-1"]  # the largest face of the frame
    assert [d2[c] for c in AU_COLUMNS] == [c == "au25" for c in AU_COLUMNS]
    s3 = rows["c-S3-yunet-0"]
    assert (s3["au6"], s3["au12"], s3["au1"], s3["au_source"]) == (True, False, None, "pseudo")
    # groups and splits
    assert d1["group"] == d2["group"] == "disfa:SN001"
    assert d1["split"] == d2["split"] == group_split("disfa:SN001")
    assert rows["c-S1-yunet-0"]["group"] == "scraped:b1"
    assert rows["c-S1-yunet-0"]["split"] == group_split("scraped:b1")
    assert rows["c-F1-yunet-0"]["group"] == "fer2013:F1"
    assert [rows[f"c-{i}-yunet-0"]["split"] for i in ("F1", "F2", "F4")] == ["train", "val", "test"]
    assert rows["c-F3-yunet-0"]["split"] == group_split("fer2013:F3")

    flagged = _by_crop(build_manifest(filled, include_flagged=True))
    assert set(flagged) - set(rows) == {"c-D3-yunet-0"}
    assert flagged["c-D3-yunet-0"]["au1"] is True


def test_labels_that_name_their_face(filled):
    """Pseudo and human labels name their face (crop_id): each face of a group photo gets its own;
    on a one-face source a face label is the image's; a human label beats the production model's
    pseudo label of the same face; an excluded face leaves the version."""
    face_labels = [
        {**_emotion("S2", "happy", "human", "labelstudio:1"), "crop_id": "c-S2-yunet-0"},
        {**_emotion("S2", "sad", "pseudo", "model-b", 0.95), "crop_id": "c-S2-yunet-1"},
        {**_emotion("S1", "fear", "human", "labelstudio:1"), "crop_id": "c-S1-yunet-0"},
        {**_emotion("F2", "sad", "human", "fiftyone"), "crop_id": "c-F2-other-crop-set"},
    ]
    filled.append("emotion_labels", _table("emotion_labels", [{**r, "threshold": None} for r in face_labels]))
    filled.append(
        "au_labels",
        _table("au_labels", [{**_au("S2", 12, True, "pseudo", "model-a", 0.9), "crop_id": "c-S2-yunet-1"}]),
    )
    rows = _by_crop(build_manifest(filled))
    assert (rows["c-S2-yunet-0"]["emotion"], rows["c-S2-yunet-0"]["emotion_source"]) == ("happy", "human")
    assert (rows["c-S2-yunet-1"]["emotion"], rows["c-S2-yunet-1"]["emotion_source"]) == ("sad", "pseudo")
    assert rows["c-S2-yunet-1"]["au12"] is True and rows["c-S2-yunet-0"]["au12"] is None
    assert (rows["c-S1-yunet-0"]["emotion"], rows["c-S1-yunet-0"]["emotion_source"]) == ("fear", "human")
    assert (rows["c-F2-yunet-0"]["emotion"], rows["c-F2-yunet-0"]["emotion_source"]) == ("sad", "human")
    before = version_id(build_manifest(filled))
    exclusion = {"crop_id": "c-S1-yunet-0", "excluded": True, "reason": "reject", "annotator": "fiftyone"}
    filled.append("exclusions", _table("exclusions", [exclusion]))
    assert "c-S1-yunet-0" not in _by_crop(build_manifest(filled))
    filled.append("exclusions", _table("exclusions", [{**exclusion, "excluded": False}]))  # the tag removed
    assert version_id(build_manifest(filled)) == before


def test_group_split_is_fixed_and_near_70_15_15():
    assert group_split("disfa:SN001") == group_split("disfa:SN001")
    splits = [group_split(f"g{i}") for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.70) < 0.03 and abs(share["val"] - 0.15) < 0.03


def test_version_id_is_content_hash(filled):
    m = build_manifest(filled)
    v = version_id(m)
    assert v.startswith("v-") and len(v) == 18
    assert version_id(build_manifest(filled)) == v
    assert version_id(m.take(list(reversed(range(m.num_rows))))) == v  # row order is not content
    # a new label changes the content, and so the id
    filled.append("emotion_labels", _table("emotion_labels", [_emotion("F2", "happy", "human", "carol")]))
    assert version_id(build_manifest(filled)) != v
    with pytest.raises(ValueError, match="not a manifest"):
        version_id(m.drop_columns(["split"]))


# ---- snapshots -----------------------------------------------------------------------------
def test_snapshot_is_idempotent_and_readable(filled):
    first = snapshot_dataset_version(filled)
    assert first.created and first.parent is None
    assert first.n_crops == 13 and first.n_emotion_labeled == 9 and first.n_au_labeled == 3
    assert first.counts["crops"]["fer2013"] == Counter(["train", "val", "test", group_split("fer2013:F3")])
    assert first.counts["emotion_source"] == {"gold": 3, "human": 1, "pseudo": 2, "weak": 3}
    n_manifest, n_versions = filled.count("dataset_manifest"), filled.count("dataset_versions")
    assert (n_manifest, n_versions) == (13, 1)

    again = snapshot_dataset_version(filled)
    assert not again.created and again.version == first.version and again.counts == first.counts
    assert (filled.count("dataset_manifest"), filled.count("dataset_versions")) == (13, 1)

    stored = read_manifest(filled, first.version)
    assert stored.column("version").to_pylist() == [first.version] * 13
    assert version_id(stored) == first.version
    assert stored.drop_columns(["version"]).equals(build_manifest(filled))

    filled.append("emotion_labels", _table("emotion_labels", [_emotion("S3", "sad", "human", "dave")]))
    second = snapshot_dataset_version(filled, parent=first.version)
    assert second.created and second.version != first.version and second.parent == first.version
    assert list_versions(filled).column("version").to_pylist() == [first.version, second.version]
    assert filled.count("dataset_manifest") == 26
    assert read_manifest(filled, first.version).num_rows == 13  # the old version is unchanged


def test_unknown_versions_are_clear_errors(filled):
    with pytest.raises(UnknownDatasetVersion, match="unknown dataset version 'v-0000000000000000'"):
        read_manifest(filled, "v-0000000000000000")
    with pytest.raises(UnknownDatasetVersion):
        read_manifest(filled, "'; DROP TABLE x; --")
    with pytest.raises(UnknownDatasetVersion):
        snapshot_dataset_version(filled, parent="v-0000000000000000")
    assert filled.count("dataset_versions") == 0


def test_model_tables_key_null_fold(wh):
    row = {
        "model_id": "m1",
        "dataset_version": "v-0",
        "task": "au",
        "fold": None,
        "metric": "avg_f1",
        "label": "",
        "value": 0.5,
    }
    assert wh.append("eval_metrics", pa.Table.from_pylist([row, {**row, "fold": 0}])) == 2
    assert wh.append("eval_metrics", pa.Table.from_pylist([row])) == 0


def test_empty_warehouse(wh):
    m = build_manifest(wh)
    assert m.num_rows == 0 and m.schema.equals(MANIFEST_SCHEMA)
    v = snapshot_dataset_version(wh)
    assert v.created and v.n_crops == 0 and read_manifest(wh, v.version).num_rows == 0


# ---- the demo data root --------------------------------------------------------------------
@pytest.mark.slow  # the session's `ferlab demo` data root
def test_demo_manifest(tmp_path, demo_root):
    # A copy of the tables only: opening a Warehouse creates missing table folders, and the
    # demo root must stay untouched. Media stay where they are (the manifest holds paths).
    home = tmp_path / "demo"
    shutil.copytree(demo_root.home / "tables", home / "tables", ignore=shutil.ignore_patterns(".*"))
    wh = Warehouse(home)
    m = build_manifest(wh)
    counts = {}
    for r in m.select(["source", "split", "emotion", "au_source"]).to_pylist():
        c = counts.setdefault(r["source"], {"crops": 0, "emotion": 0, "au": 0})
        c["crops"] += 1
        c["emotion"] += r["emotion"] is not None
        c["au"] += r["au_source"] is not None
    print("demo manifest:", m.num_rows, "crops", counts)
    assert m.num_rows > 0
    assert len(set(m.column("crop_id").to_pylist())) == m.num_rows
    if "disfa" in counts:
        assert counts["disfa"]["au"] == counts["disfa"]["crops"]  # every DISFA frame has gold AUs
    if "fer2013" in counts:
        assert counts["fer2013"]["emotion"] == counts["fer2013"]["crops"]
        fer = wh.sql("SELECT count(*) AS n FROM images WHERE source = 'fer2013'").column("n")[0].as_py()
        assert counts["fer2013"]["crops"] == fer  # one crop per FER-2013 image
    for path in m.column("media_path").to_pylist()[:50]:
        assert (demo_root.home / path).is_file()
    assert version_id(build_manifest(wh)) == version_id(m)
