"""FiftyOne both ways, against FiftyOne's real database: the sync shows each face's emotion,
the production model's pseudo labels and the review queue; a curator's edits and tags come
back (labeling.fiftyone.corrections) as human labels and exclusions the next dataset version
honours. The warehouse is built by hand (rows only: neither the sync nor the versions open
media files)."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pytest

from ferlab.cli import main
from labeling.fiftyone.corrections import CorrectionsReport, pull_corrections
from labeling.fiftyone.sync import REVIEW_VIEW, SyncReport, sync_fiftyone
from warehouse.schemas import TABLES
from warehouse.store import Warehouse
from warehouse.versions import build_manifest, snapshot_dataset_version

pytestmark = pytest.mark.server  # FiftyOne's database (mongod)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = TABLES[name].schema
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def _image(image_id: str, source: str, split: str | None = None, batch: str = "b1") -> dict:
    return dict(
        image_id=image_id,
        source=source,
        source_uri=f"/in/{image_id}",
        split=split,
        batch=batch,
        width=200,
        height=100,
        media_path=f"media/{image_id}.png",
    )


def _face(image_id: str, n: int = 0) -> tuple[dict, dict]:
    det_id = f"d-{image_id}-{n}"
    det = dict(
        detection_id=det_id,
        image_id=image_id,
        source_uri=f"/in/{image_id}",
        width=200,
        height=100,
        label="face",
        x1=10.0 + 100 * n,
        y1=10.0,
        x2=90.0 + 100 * n,
        y2=90.0,
        score=0.9,
        detector="yunet",
        weights_sha256="w",
    )
    crop = dict(
        crop_id=f"c-{image_id}-{n}",
        image_id=image_id,
        detection_id=det_id,
        media_path=f"media/c-{image_id}-{n}.jpg",
        gray_media_path=f"media/c-{image_id}-{n}.png",
        size=224,
        gray_size=48,
        margin=0.25,
        angle=0.0,
        face_px=80.0,
        blur=100.0,
        brightness=120.0,
        too_small=False,
        too_blurry=False,
    )
    return det, crop


def _fill(wh: Warehouse) -> None:
    """F1: a FER-2013 face (gold happy); S1: a scraped image of one face (folder label);
    S2: a group photo of two faces, each with the production model's pseudo labels."""
    wh.append(
        "images",
        _table(
            "images", [_image("F1", "fer2013", "train"), _image("S1", "scraped"), _image("S2", "scraped")]
        ),
    )
    dets, crops = zip(_face("F1"), _face("S1"), _face("S2", 0), _face("S2", 1))
    wh.append("detections", _table("detections", list(dets)))
    wh.append("crops", _table("crops", list(crops)))
    wh.append(
        "emotion_labels",
        _table(
            "emotion_labels",
            [
                dict(image_id="F1", emotion="happy", label_source="gold", annotator="fer2013"),
                dict(image_id="S1", emotion="neutral", label_source="weak", annotator="folder:neutral"),
                *(
                    dict(
                        image_id="S2",
                        crop_id=c,
                        emotion=e,
                        label_source="pseudo",
                        confidence=p,
                        threshold=0.5,
                        annotator=m,
                    )  # fmt: skip
                    for c, e, p, m in (
                        ("c-S2-0", "sad", 0.9, "model-b"),
                        ("c-S2-1", "angry", 0.8, "model-b"),
                        ("c-S2-1", "fear", 0.99, "model-a"),  # not the production model
                    )
                ),
            ],
        ),
    )
    wh.append(
        "au_labels",
        _table(
            "au_labels",
            [
                dict(
                    image_id="S2",
                    crop_id="c-S2-0",
                    au=12,
                    present=True,
                    label_source="pseudo",
                    probability=0.7,
                    threshold=0.4,
                    annotator="model-b",
                ),  # fmt: skip
            ],
        ),
    )
    wh.append(
        "model_promotions",
        _table(
            "model_promotions",
            [
                dict(
                    task=t,
                    model_id="model-b",
                    promoted=True,
                    metric="m",
                    value=1.0,
                    dataset_version="v-0000000000000000",
                    reason="test",
                    decided_at=T0,
                )  # fmt: skip
                for t in ("emotion", "au")
            ],
        ),
    )
    wh.append(
        "review_queue",
        _table(
            "review_queue",
            [
                dict(
                    queue="model-b",
                    crop_id=c,
                    image_id=i,
                    media_path="m",
                    reason="uncertain",
                    priority=p,
                    queued_at=T0,
                )  # fmt: skip
                for c, i, p in (("c-S2-1", "S2", 0.7), ("c-F1-0", "F1", 0.3))
            ],
        ),
    )


@pytest.fixture
def filled(wh):
    _fill(wh)
    return wh


def _faces(name: str) -> dict:
    """crop_id -> its face_emotions detection."""
    import fiftyone as fo

    return {
        d.crop_id: d for s in fo.load_dataset(name) if s.face_emotions for d in s.face_emotions.detections
    }


def _sample(name: str, image_id: str):
    import fiftyone as fo

    return fo.load_dataset(name).one(fo.ViewField("image_id") == image_id)


def _manifest(wh: Warehouse) -> dict:
    return {r["crop_id"]: r for r in build_manifest(wh).to_pylist()}


def _edit(
    name: str, crop_id: str, label: str | None = None, tag: str | None = None, untag: str | None = None
):
    """What a curator does in the App: change a face's label, add or remove a label tag."""
    import fiftyone as fo

    ds = fo.load_dataset(name)
    sample = ds.one(fo.ViewField("face_emotions.detections.crop_id").contains(crop_id))
    face = next(d for d in sample.face_emotions.detections if d.crop_id == crop_id)
    if label is not None:
        face.label = label
    if tag:
        face.tags.append(tag)
    if untag:
        face.tags.remove(untag)
    sample.save()


def test_sync_shows_faces_pseudo_labels_and_the_review_queue(filled, dataset_name):
    import fiftyone as fo

    assert sync_fiftyone(filled, dataset_name) == SyncReport(3, 0, 0, 3)
    faces = _faces(dataset_name)
    assert set(faces) == {"c-F1-0", "c-S1-0", "c-S2-0", "c-S2-1"}
    f1, s1, s20, s21 = (faces[c] for c in ("c-F1-0", "c-S1-0", "c-S2-0", "c-S2-1"))
    assert (f1.label, f1.label_source, f1.ferlab_label) == ("happy", "gold", "happy")
    assert (s1.label, s1.label_source) == ("neutral", "weak")  # the only face takes the folder label
    assert (s20.label, s20.label_source, s20.confidence, s20.threshold) == (
        "sad",
        "pseudo",
        pytest.approx(0.9),
        0.5,
    )
    assert (s21.label, s21.annotator) == ("angry", "model-b")  # model-a is not in production
    assert s21.bounding_box == pytest.approx([0.55, 0.1, 0.4, 0.8])
    preds = _sample(dataset_name, "S2").predictions.classifications
    got = {(p.crop_id, p.label, p.kind, p.model): (p.confidence, p.threshold, p.present) for p in preds}
    assert got == {
        ("c-S2-0", "sad", "emotion", "model-b"): (pytest.approx(0.9), 0.5, True),
        ("c-S2-1", "angry", "emotion", "model-b"): (pytest.approx(0.8), 0.5, True),
        ("c-S2-0", "AU12", "au", "model-b"): (pytest.approx(0.7), pytest.approx(0.4), True),
    }
    ds = fo.load_dataset(dataset_name)
    assert REVIEW_VIEW in ds.list_saved_views()
    queue = ds.load_saved_view(REVIEW_VIEW)
    assert [p.face_emotions.crop_id for p in queue] == ["c-S2-1", "c-F1-0"]  # by priority
    assert queue.values("face_emotions.review_reasons") == [["uncertain"], ["uncertain"]]


def test_a_queued_patch_shows_what_the_models_think_and_why_it_waits(filled, dataset_name):
    """The review view's patches carry the production models' view of each face (every
    probability, the top class, the AUs by the model's call with their FACS names), every reason
    the face waits for with its detail, and each reason has a view of its own."""
    import fiftyone as fo

    from labeling.fiftyone.sync import review_view_name
    from tests.conftest import hand_made_production_model

    wh = filled
    later = T0 + dt.timedelta(days=1)
    hand_made_production_model(
        wh, "emotion", "emotion-m", {"c-S2-1": {"sad": 0.55, "angry": 0.3}, "c-F1-0": {"happy": 0.9}}, later
    )
    hand_made_production_model(wh, "au", "au-m", {"c-S2-1": {"AU12": 0.95, "AU4": 0.5, "AU1": 0.02}}, later)
    wh.append(
        "review_queue",
        _table(
            "review_queue",
            [
                dict(
                    queue=q,
                    crop_id="c-S2-1",
                    image_id="S2",
                    media_path="m",
                    reason=r,
                    priority=p,
                    detail=d,
                    queued_at=T0,
                )  # fmt: skip
                for q, r, p, d in (
                    ("emotion:emotion-m", "weak_disagrees", 0.25, "weak angry 0.30, model sad 0.55"),
                    ("au:au-m", "between_thresholds", 0.1, "AU4 0.50"),
                )
            ],
        ),
    )
    sync_fiftyone(wh, dataset_name)
    ds = fo.load_dataset(dataset_name)
    queue = ds.load_saved_view(REVIEW_VIEW)
    face = next(p.face_emotions for p in queue if p.face_emotions.crop_id == "c-S2-1")
    assert face.review_priority == pytest.approx(0.7)
    assert face.review_reasons == ["between_thresholds", "uncertain", "weak_disagrees"]
    assert face.review_detail == (
        "uncertain (model-b); weak_disagrees (emotion): weak angry 0.30, model sad 0.55; "
        "between_thresholds (au): AU4 0.50"
    )
    assert (face.model_emotion, face.model_emotion_call, face.emotion_model) == ("sad", "unsure", "emotion-m")
    assert face.model_emotion_p == pytest.approx(0.55) and face.p_angry == pytest.approx(0.3)
    assert face.aus_present == ["AU12 lip corner puller"] and face.aus_unsure == ["AU4 brow lowerer"]
    assert "AU1 inner brow raiser" in face.aus_absent and face.p_AU12 == pytest.approx(0.95)
    f1 = next(p.face_emotions for p in queue if p.face_emotions.crop_id == "c-F1-0")
    assert (f1.model_emotion, f1.model_emotion_call) == ("happy", "present")
    assert getattr(f1, "aus_present", None) is None  # the AU model never predicted this face
    # a view per reason, each with only the faces waiting for it
    assert [p.face_emotions.crop_id for p in ds.load_saved_view(review_view_name("weak_disagrees"))] == [
        "c-S2-1"
    ]
    assert len(ds.load_saved_view(review_view_name("most_unique"))) == 0
    # the sidebar's filters work on the declared fields
    schema = ds.get_field_schema(flat=True)
    assert {"face_emotions.detections.p_AU12", "face_emotions.detections.aus_unsure"} <= set(schema)


def test_edit_and_reject_come_back_and_the_next_version_honours_them(filled, dataset_name):
    """The issue's test: edit a face's label and tag one face `reject`; pull; the next
    version has the edit and lacks the rejected face. Pulling again adds nothing, and a
    re-sync shows the edit and the exclusion instead of erasing them."""
    wh = filled
    sync_fiftyone(wh, dataset_name)
    before = snapshot_dataset_version(wh)
    m = _manifest(wh)
    assert (m["c-S2-1"]["emotion"], m["c-S2-1"]["emotion_source"]) == ("angry", "pseudo") and "c-S1-0" in m

    _edit(dataset_name, "c-S2-1", label="happy")
    _edit(dataset_name, "c-S1-0", tag="reject")
    report = pull_corrections(wh, dataset_name)
    assert report == CorrectionsReport(edits=1, rejects=1)
    human = wh.sql("SELECT * FROM emotion_labels WHERE label_source = 'human'").to_pylist()
    assert [(r["image_id"], r["crop_id"], r["emotion"], r["annotator"]) for r in human] == [
        ("S2", "c-S2-1", "happy", "fiftyone:curator")
    ]
    excl = wh.sql("SELECT crop_id, excluded, reason, annotator FROM exclusions").to_pylist()
    assert excl == [dict(crop_id="c-S1-0", excluded=True, reason="reject", annotator="fiftyone:curator")]

    after = snapshot_dataset_version(wh, parent=before.version)
    assert after.created and after.version != before.version
    m = _manifest(wh)
    assert (m["c-S2-1"]["emotion"], m["c-S2-1"]["emotion_source"]) == ("happy", "human")
    assert "c-S1-0" not in m and after.n_crops == before.n_crops - 1

    # pulling twice adds nothing
    counts = {t: wh.count(f"{t}_history") for t in ("emotion_labels", "exclusions")}
    assert pull_corrections(wh, dataset_name) == CorrectionsReport()
    assert {t: wh.count(f"{t}_history") for t in counts} == counts

    # a re-sync keeps the edit (the human label now wins) and shows the exclusion as a tag
    assert sync_fiftyone(wh, dataset_name).updated == 2
    faces = _faces(dataset_name)
    assert (faces["c-S2-1"].label, faces["c-S2-1"].label_source) == ("happy", "human")
    assert faces["c-S1-0"].tags == ["reject"] and faces["c-S1-0"].excluded
    assert pull_corrections(wh, dataset_name) == CorrectionsReport()
    # the face edited after it was queued is no longer waiting
    queue = _sample(dataset_name, "S2").face_emotions.detections
    assert [getattr(d, "review_priority", None) for d in queue] == [None, None]

    # removing the tag lifts the exclusion: the face is back in the next version
    _edit(dataset_name, "c-S1-0", untag="reject")
    assert pull_corrections(wh, dataset_name) == CorrectionsReport(unrejects=1)
    assert "c-S1-0" in _manifest(wh)
    # editing the face again supersedes the first edit
    _edit(dataset_name, "c-S2-1", label="surprise")
    assert pull_corrections(wh, dataset_name).edits == 1
    assert _manifest(wh)["c-S2-1"]["emotion"] == "surprise"
    assert wh.count("emotion_labels_history") == counts["emotion_labels"] + 1


def test_relabel_sample_tags_and_pending_edits(filled, dataset_name, capsys):
    import fiftyone as fo

    wh = filled
    sync_fiftyone(wh, dataset_name)
    ds = fo.load_dataset(dataset_name)
    # `relabel` on a one-face sample: queued, and out of the versions until relabeled
    ds.match(fo.ViewField("image_id") == "F1").tag_samples("relabel")
    ds.match(fo.ViewField("image_id") == "S2").tag_samples("reject")  # two faces: which one?
    _edit(dataset_name, "c-S2-0", label="not-an-emotion")
    report = pull_corrections(wh, dataset_name, user="ann")
    assert (report.relabels, report.ambiguous, report.invalid, report.edits) == (
        1,
        1,
        ["c-S2-0: not-an-emotion"],
        0,
    )
    queued = wh.sql("SELECT queue, crop_id, reason, priority FROM review_queue WHERE queue = 'fiftyone'")
    assert queued.to_pylist() == [dict(queue="fiftyone", crop_id="c-F1-0", reason="relabel", priority=1.0)]
    assert "c-F1-0" not in _manifest(wh) and {"c-S2-0", "c-S2-1"} <= set(_manifest(wh))

    # a warehouse change re-syncs S2 while a curator's edit of it is not pulled yet: kept
    _edit(dataset_name, "c-S2-0", label="fear")
    wh.append(
        "emotion_labels",
        _table(
            "emotion_labels",
            [dict(image_id="S2", emotion="happy", label_source="weak", annotator="folder:x")],
        ),
    )
    sync_fiftyone(wh, dataset_name)
    faces = _faces(dataset_name)
    assert (faces["c-S2-0"].label, faces["c-S2-0"].ferlab_label) == ("fear", "not-an-emotion")
    assert faces["c-F1-0"].tags == ["relabel"]  # the exclusion's reason, from the warehouse

    # the curator relabels F1 and the CLI pulls: the edit lands and the exclusion is lifted
    _edit(dataset_name, "c-F1-0", label="sad")
    assert main(["--home", str(wh.home), "review", "pull", "--dataset", dataset_name, "--user", "ann"]) == 0
    assert "edits 2" in capsys.readouterr().out
    m = _manifest(wh)
    assert (m["c-F1-0"]["emotion"], m["c-F1-0"]["emotion_source"]) == ("sad", "human")
    assert (m["c-S2-0"]["emotion"], m["c-S2-0"]["emotion_source"]) == ("fear", "human")
    assert pull_corrections(wh, dataset_name, user="ann") == CorrectionsReport()


def test_pull_needs_a_synced_dataset(wh, capsys):
    with pytest.raises(LookupError, match="run the sync first"):
        pull_corrections(wh, f"missing-{uuid.uuid4().hex[:8]}")
    assert main(["--home", str(wh.home), "review", "pull", "--dataset", "no-such-dataset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no FiftyOne dataset") and len(err.strip().splitlines()) == 1


def test_the_fiftyone_corrections_asset(filled, dataset_name):
    from dagster import materialize

    from assets.autolabel import fiftyone_corrections
    from assets.resources import WarehouseResource

    wh = filled
    sync_fiftyone(wh, dataset_name)
    _edit(dataset_name, "c-S2-0", label="happy", tag="relabel")
    _edit(dataset_name, "c-S1-0", tag="reject")
    result = materialize(
        [fiftyone_corrections],
        resources={"warehouse": WarehouseResource(home=str(wh.home))},
        run_config={"ops": {"fiftyone_corrections": {"config": {"dataset": dataset_name}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("fiftyone_corrections")[0].metadata
    assert (meta["edits"].value, meta["rejects"].value, meta["relabels"].value) == (1, 1, 1)
    # relabeled in the same pull: queued, but not excluded, and no longer waiting
    assert set(_manifest(wh)) == {"c-F1-0", "c-S2-0", "c-S2-1"}
    assert wh.count("review_queue") == 3
    sync_fiftyone(wh, dataset_name)
    assert getattr(_faces(dataset_name)["c-S2-0"], "review_priority", None) is None
