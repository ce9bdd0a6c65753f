"""Label Studio: the label config and the annotation -> label conversion on their own, then the
whole round trip against a real server (its own virtualenv, started here on a free port on
127.0.0.1 in its own process group): push a queue, annotate through the REST API as a curator
would, pull, and find the human labels winning in the next dataset version."""

from __future__ import annotations

import json
import os
import secrets
import socket
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet in the conftest helper)
import pytest

from benchmarks.labelstudio_roundtrip import fill_queue
from labeling.curation.model_view import LabelCall, ModelView
from labeling.labelstudio.sync import (
    AU_NAMES,
    AU_TABLES,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioSettings,
    check_annotation,
    config_controls,
    diff_tasks,
    is_ferlab_config,
    label_config_xml,
    label_tables,
    labels_from_annotation,
    prediction_for,
    pull_annotations,
    push_faces,
    queue_tab,
    queue_views,
    queued_faces,
    stored_views,
    task_data,
)
from tests.conftest import hand_made_production_model
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.schemas import DISFA_AUS, EMOTIONS, TABLES
from warehouse.versions import build_manifest, snapshot_dataset_version


# ---- a warehouse with faces in the review queue: benchmarks.labelstudio_roundtrip.fill_queue ----------
def _table(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[name].schema)  # columns left out are null


# ---- no server -------------------------------------------------------------------------------------
# The label config of ferlab's earlier versions (bare AU codes, no models' tables): a project made
# with it is brought up to date by ensure_project.
OLD_CONFIG = (
    '<View>\n  <Image name="image" value="$image"/>\n  <Header value="Emotion"/>\n'
    '  <Choices name="emotion" toName="image" choice="single" showInline="true">\n'
    + "".join(f'    <Choice value="{e}"/>\n' for e in EMOTIONS)
    + '  </Choices>\n  <Header value="Action Units present"/>\n'
    '  <Choices name="aus" toName="image" choice="multiple" showInline="true">\n'
    + "".join(f'    <Choice value="AU{n}"/>\n' for n in DISFA_AUS)
    + "  </Choices>\n"
    '  <Choices name="aus_reviewed" toName="image" choice="multiple" showInline="true">\n'
    '    <Choice value="AUs reviewed"/>\n  </Choices>\n</View>\n'
)


def test_label_config():
    root = ET.fromstring(label_config_xml())
    image = root.find(".//Image")
    assert image.get("name") == "image" and image.get("value") == "$image"
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert choices["emotion"].get("choice") == "single" and choices["aus"].get("choice") == "multiple"
    assert [c.get("value") for c in choices["emotion"]] == list(EMOTIONS)
    # The AU choices show their FACS names and store the bare code (the alias)
    assert [c.get("alias") for c in choices["aus"]] == [f"AU{n}" for n in DISFA_AUS]
    assert [c.get("value") for c in choices["aus"]][:3] == [
        "AU1 inner brow raiser",
        "AU2 outer brow raiser",
        "AU4 brow lowerer",
    ]
    assert [c.get("value") for c in choices["aus_reviewed"]] == ["AUs reviewed"]
    controls = config_controls(label_config_xml())
    assert set(controls) == {"emotion", "aus", "aus_reviewed"} and controls["aus"].multiple
    assert not controls["emotion"].multiple and controls["emotion"].values == set(EMOTIONS)
    assert controls["aus"].values == set(AU_NAMES)  # the stored values: the aliases
    with pytest.raises(ConfigError, match="not valid XML"):
        config_controls("<View><Choices", "the label config of project 3")
    assert AU_NAMES[0] == "AU1" and AU_NAMES[-1] == "AU26" and len(AU_NAMES) == 12


def test_labeling_view_puts_the_choices_beside_the_face():
    """Two columns: the crop (a fixed width) and what is asked on the left; the choices and the
    models' tables on the right."""
    root = ET.fromstring(label_config_xml())
    assert "display: flex" in root.get("style")
    left, right = root.findall("View")
    assert "max-width: 300px" in left.get("style") and left.find("Image").get("maxWidth") == "300px"
    assert left.find("Text").get("value") == "$asked"
    assert [c.get("name") for c in right.iter("Choices")] == ["emotion", "aus", "aus_reviewed"]
    tables = [(t.get("name"), t.get("value")) for t in right.iter("Table")]
    assert tables == [(n, f"${n}") for n in ("model_emotions", "model_aus_upper", "model_aus_lower")]
    assert sorted(f"AU{n}" for _, _, numbers in AU_TABLES for n in numbers) == sorted(AU_NAMES)
    assert all(len(numbers) <= 10 for _, _, numbers in AU_TABLES)  # Label Studio pages tables at 10 rows
    assert root.find("Style").text.strip().startswith(".ferlab-models")
    assert is_ferlab_config(label_config_xml()) and is_ferlab_config(OLD_CONFIG)


def test_only_ferlabs_own_configs_are_replaced():
    before_the_confirmation = OLD_CONFIG.split('  <Choices name="aus_reviewed"')[0] + "</View>\n"
    assert is_ferlab_config(before_the_confirmation)
    edited = [
        OLD_CONFIG.replace("</View>", '<TextArea name="note" toName="image"/></View>'),  # a control added
        OLD_CONFIG.replace('<Choice value="sad"/>', '<Choice value="sad"/><Choice value="contempt"/>'),
        OLD_CONFIG.replace('<Choices name="aus"', '<Choices name="action_units"'),
        OLD_CONFIG.replace("<Image ", "<Video "),
        "<View><Choices",
    ]
    assert not any(is_ferlab_config(c) for c in edited)


class _Projects:
    """Stands in for the SDK's projects in `_ensure_label_config`: holds a label config, refuses
    updates (as the server does with a config it finds invalid)."""

    def __init__(self, config: str):
        self.config, self.updates = config, []

    def get(self, id):
        return type("Project", (), {"label_config": self.config})()

    def update(self, id, **fields):
        from label_studio_sdk.core.api_error import ApiError

        self.updates.append(fields)
        raise ApiError(status_code=400, body={"detail": "Validation error"})


def test_a_config_the_server_refuses_or_someone_edited_is_left_alone(caplog):
    client = LabelStudioClient(LabelStudioSettings(url="http://127.0.0.1:1", api_key="k"))
    client.sdk = type("SDK", (), {})()
    client.sdk.projects = _Projects(OLD_CONFIG)
    with caplog.at_level("WARNING"):
        assert client._ensure_label_config(3) is False
    assert len(client.sdk.projects.updates) == 1 and "keeps its label config" in caplog.text
    assert "HTTP 400" in caplog.text
    client.sdk.projects = _Projects(
        OLD_CONFIG.replace("</View>", '<TextArea name="note" toName="image"/></View>')
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert client._ensure_label_config(3) is False
    assert client.sdk.projects.updates == [] and "edited on the server" in caplog.text
    client.sdk.projects = _Projects(label_config_xml())
    assert client._ensure_label_config(3) is False and client.sdk.projects.updates == []  # up to date


def _views(
    emotion: dict[str, tuple[float, str]] | None = None, aus: dict[str, tuple[float, str]] | None = None
):
    """Hand-made model views of a face: label -> (probability, call); AUs left out are absent at 0.01."""
    out = {}
    if emotion is not None:
        calls = [LabelCall(e, *emotion.get(e, (0.01, "absent"))) for e in EMOTIONS]
        out["emotion"] = ModelView("emotion", "emotion-m1", tuple(calls))
    if aus is not None:
        out["au"] = ModelView(
            "au", "au-m2", tuple(LabelCall(a, *aus.get(a, (0.01, "absent"))) for a in AU_NAMES)
        )
    return out


def test_prediction_prefills_both_models_calls():
    views = _views(
        {"sad": (0.9, "present"), "happy": (0.05, "absent")},
        {"AU1": (0.95, "present"), "AU4": (0.5, "unsure"), "AU12": (0.97, "present")},
    )
    p = prediction_for(views)
    assert p["model_version"] == "emotion-m1 + au-m2"
    by_name = {r["from_name"]: r["value"]["choices"] for r in p["result"]}
    assert by_name == {"emotion": ["sad"], "aus": ["AU1", "AU12"]}  # AU4 (unsure) is not ticked
    assert 0.9 < p["score"] < 1
    # An emotion the model cannot call is not pre-filled; the AUs still are.
    unsure = prediction_for(_views({"sad": (0.5, "unsure")}, {"AU6": (0.93, "present")}), "v")
    assert unsure["model_version"] == "v" and [r["from_name"] for r in unsure["result"]] == ["aus"]
    assert prediction_for(_views(aus={"AU4": (0.5, "unsure")})) is None  # nothing called present
    assert prediction_for({}) is None


def test_task_data_readable_columns_first_and_the_models_tables():
    row = {
        "crop_id": "c1",
        "image_id": "i1",
        "media_path": "media/ab/c1.jpg",
        "priority": 0.8333333,
        "queues": ["au:au-m2", "emotion:emotion-m1"],
        "reasons": ["between_thresholds", "weak_disagrees"],
        "details": ["between_thresholds: AU4 0.50", "weak_disagrees: happy"],
        "weak_label": "happy",
        "source": "scraped",
    }
    views = _views(
        {"sad": (0.55, "unsure"), "happy": (0.3, "absent")},
        {"AU1": (0.95, "present"), "AU4": (0.5, "unsure"), "AU12": (0.02, "absent")},
    )
    data = task_data(row, views)
    assert list(data)[:5] == ["queue", "reasons", "priority", "weak_label", "source"]
    assert list(data)[-2:] == ["crop_id", "image_id"]
    assert data["queue"] == "au:au-m2, emotion:emotion-m1" and data["priority"] == 0.833
    assert data["reasons"] == "between_thresholds, weak_disagrees" and data["weak_label"] == "happy"
    assert data["detail"] == "between_thresholds: AU4 0.50; weak_disagrees: happy"
    assert data["image"] == "/data/local-files/?d=media/ab/c1.jpg" and data["models"] == "emotion-m1 + au-m2"
    assert (
        data["asked"]
        == "Asked, the models are unsure: the emotion (best guess sad 0.55); AU4 brow lowerer (0.50)"
    )
    emotions = data["model_emotions"]
    assert [r["emotion"] for r in emotions][:2] == ["sad", "happy"] and len(
        emotions
    ) == 7  # most probable first
    assert emotions[0] == {"emotion": "sad", "p": "0.55", "call": "UNSURE — asked"}
    upper, lower = data["model_aus_upper"], data["model_aus_lower"]
    assert len(upper) + len(lower) == 12 and upper[0] == {
        "upper face AU": "AU1 inner brow raiser",
        "p": "0.95",
        "call": "present (pre-ticked)",
    }
    assert upper[2] == {"upper face AU": "AU4 brow lowerer", "p": "0.50", "call": "UNSURE — asked"}
    assert {"lower face AU": "AU12 lip corner puller", "p": "0.02", "call": "absent"} in lower
    json.dumps(data)  # what the import sends
    only_au1 = task_data(row, {"au": ModelView("au", "au-m2", (LabelCall("AU1", 0.95, "present"),))})
    assert only_au1["model_aus_upper"][1] == {
        "upper face AU": "AU2 outer brow raiser",
        "p": "—",
        "call": "not predicted",
    }
    assert only_au1["model_emotions"] == [] and only_au1["models"] == "au-m2"
    bare = task_data(row)  # no model: empty tables, and the curator is told
    assert bare["model_emotions"] == [] and bare["model_aus_upper"] == [] and bare["models"] == ""
    assert bare["asked"].startswith("No model view")


def test_queue_tab_shows_the_readable_columns():
    tab = queue_tab()
    hidden = set(tab["hiddenColumns"]["explore"])
    assert {"tasks:data.crop_id", "tasks:data.image_id", "tasks:data.model_emotions"} <= hidden
    assert not hidden & {f"tasks:data.{k}" for k in ("queue", "reasons", "priority", "weak_label", "source")}
    assert tab["ordering"] == ["-tasks:data.priority"] and tab["title"] == "ferlab queue"


def test_settings_never_show_the_key(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "s3cretkey")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    s = LabelStudioSettings.from_env()
    assert s.url == "http://127.0.0.1:8089" and s.api_key == "s3cretkey" and "s3cret" not in repr(s)
    assert "s3cret" not in repr(LabelStudioClient(s))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY is not set"):
        LabelStudioClient(LabelStudioSettings.from_env())


def test_server_env(tmp_path):
    from labeling.labelstudio.server import server_env

    env = server_env(tmp_path, "abc123", base_env={})
    assert (
        env["LABEL_STUDIO_USER_TOKEN"] == "abc123" and env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    )
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path.resolve() / "labelstudio")
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path.resolve())
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false" and env["SENTRY_DSN"] == ""
    for bad in ("", "x" * 41, "a b"):
        with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY"):
            server_env(tmp_path, bad, base_env={})


def _annotation(user, emotion=None, aus=(), cancelled=False, updated="2026-01-01T00:00:00Z"):
    result = []
    if emotion:
        result.append(
            {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [emotion]}}
        )
    if aus:
        result.append(
            {"from_name": "aus", "to_name": "image", "type": "choices", "value": {"choices": list(aus)}}
        )
    return {"completed_by": user, "result": result, "was_cancelled": cancelled, "updated_at": updated}


def test_annotation_to_labels():
    lab = labels_from_annotation("c1", _annotation(7, "sad", ["AU1", "AU4"]))
    assert lab.annotator == "labelstudio:7" and lab.emotion == "sad" and lab.aus_present == {"AU1", "AU4"}
    assert labels_from_annotation("c1", _annotation(7, "sad", cancelled=True)) is None
    older = labels_from_annotation("c1", _annotation(7, "happy", ["AU12"], updated="2025-01-01T00:00:00Z"))
    emotions, aus = label_tables([lab, older], {"c1": "i1"})
    assert emotions.num_rows == 1
    assert emotions.column("emotion").to_pylist() == ["sad"]  # the newest annotation of a user wins
    present = dict(zip(aus.column("au").to_pylist(), aus.column("present").to_pylist()))
    assert len(present) == 12 and {a for a, p in present.items() if p} == {1, 4}
    assert set(aus.column("annotator").to_pylist()) == {"labelstudio:7"}
    assert label_tables([lab], {})[1].num_rows == 0  # a face this warehouse does not know


class FakeClient:
    """Stands in for the server in pull: returns a fixed export under ferlab's label config."""

    def __init__(self, tasks, label_config: str | None = None):
        self.tasks = tasks
        self.config = label_config or label_config_xml()
        self.settings = LabelStudioSettings(url="http://127.0.0.1:1", api_key="k")

    def export_annotated(self, project_id):
        return self.tasks

    def label_config(self, project_id):
        return self.config

    def prediction_results(self, project_id):  # the export carries prediction ids only
        return {71: [_result("aus", ["AU1", "AU2"])]}


def test_pull_supersedes_and_is_idempotent(wh):
    crop = fill_queue(wh, 2)
    tasks = [{"data": {"crop_id": crop[0]}, "annotations": [_annotation(3, "sad", ["AU1", "AU4"])]}]
    tasks.append({"data": {"crop_id": crop[1]}, "annotations": [_annotation(3, cancelled=True)]})
    first = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert (first.annotations, first.skipped, first.emotion_added, first.au_added) == (1, 1, 1, 12)
    again = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert (again.emotion_added, again.emotion_updated, again.au_added, again.au_updated) == (0, 0, 0, 0)
    # The curator changes the emotion and un-ticks AU4: both supersede, AU4 becomes absent.
    tasks[0]["annotations"] = [_annotation(3, "angry", ["AU1"], updated="2026-02-01T00:00:00Z")]
    changed = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert (changed.emotion_updated, changed.au_updated, changed.au_added) == (1, 1, 0)
    human = wh.sql("SELECT au, present FROM au_labels WHERE label_source = 'human' ORDER BY au").to_pylist()
    assert [r["au"] for r in human if r["present"]] == [1]
    assert wh.sql("SELECT emotion FROM emotion_labels WHERE label_source = 'human'").to_pylist() == [
        {"emotion": "angry"}
    ]


def _result(from_name, choices):
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": list(choices)},
    }


def _au_labels(wh) -> dict[str, dict[int, bool]]:
    rows = wh.sql("SELECT crop_id, au, present FROM au_labels WHERE label_source = 'human'").to_pylist()
    out: dict[str, dict[int, bool]] = {}
    for r in rows:
        out.setdefault(r["crop_id"], {})[r["au"]] = r["present"]
    return out


def test_emotion_only_answer_says_nothing_about_aus(wh):
    """Issue 21, defect 2: an AU control counts only when the curator touched or confirmed it."""
    crop = fill_queue(wh, 4)
    prefill = {
        "id": 70,
        "model_version": "m",
        "result": [_result("emotion", ["sad"]), _result("aus", ["AU12"])],
    }
    reviewed = {**_annotation(3, "happy"), "id": 12}
    reviewed["result"] = [*reviewed["result"], _result("aus", []), _result("aus_reviewed", ["AUs reviewed"])]
    untouched = {**_annotation(3, "sad", ["AU12"]), "parent_prediction": 70}  # the prefill, submitted as is
    tasks = [
        {"id": 1, "data": {"crop_id": crop[0]}, "annotations": [_annotation(3, "neutral")]},
        {"id": 2, "data": {"crop_id": crop[1]}, "annotations": [reviewed]},
        {"id": 3, "data": {"crop_id": crop[2]}, "annotations": [untouched], "predictions": [prefill]},
        {"id": 4, "data": {"crop_id": crop[3]}, "annotations": [_annotation(3, "sad", ["AU4"])]},
    ]
    report = pull_annotations(wh, FakeClient(tasks), project_id=1)
    aus = _au_labels(wh)
    assert crop[0] not in aus, "an emotion-only answer wrote AU labels"
    assert crop[2] not in aus, "the model's pre-filled AUs, submitted untouched, became human labels"
    assert aus[crop[1]] == {n: False for n in DISFA_AUS}  # confirmed: no AU present
    assert {n for n, p in aus[crop[3]].items() if p} == {4} and len(aus[crop[3]]) == 12  # touched
    assert (report.annotations, report.emotion_added, report.au_added) == (4, 4, 24)
    # A prefill known by its id only (as in the server's export): untouched says nothing; changed, or
    # confirmed as it is, answers.
    by_id = {
        **_annotation(3, "fear", ["AU1", "AU2"], updated="2026-03-01T00:00:00Z"),
        "parent_prediction": 71,
    }
    tasks[0]["annotations"] = [by_id]
    assert pull_annotations(wh, FakeClient(tasks), project_id=1).au_added == 0
    by_id["result"] = [*by_id["result"], _result("aus_reviewed", ["AUs reviewed"])]
    assert pull_annotations(wh, FakeClient(tasks), project_id=1).au_added == 12
    assert {n for n, p in _au_labels(wh)[crop[0]].items() if p} == {1, 2}


def test_annotation_outside_the_label_config_is_a_reject(wh):
    """Issue 21, defect 6: values the label config does not have are rejects, never labels."""
    crop = fill_queue(wh, 4)
    bad = [
        {**_annotation(5, "rage"), "id": 41},
        {**_annotation(5, "sad", ["AU1", "AU99"]), "id": 42},
        {
            "completed_by": 5,
            "id": 43,
            "result": [_result("mood", ["sad"])],
            "updated_at": "2026-01-01T00:00:00Z",
        },
    ]
    tasks = [{"id": 10 + i, "data": {"crop_id": crop[i]}, "annotations": [a]} for i, a in enumerate(bad)]
    tasks.append({"id": 13, "data": {"crop_id": crop[3]}, "annotations": [_annotation(5, "fear", ["AU5"])]})
    before = wh.count("rejects")
    report = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert set(_au_labels(wh)) == {crop[3]}, "an annotation outside the label config became labels"
    emotions = wh.sql("SELECT crop_id, emotion FROM emotion_labels WHERE label_source = 'human'").to_pylist()
    assert emotions == [{"crop_id": crop[3], "emotion": "fear"}]
    rejects = wh.sql("SELECT * FROM rejects WHERE source = 'labelstudio' ORDER BY source_uri").to_pylist()
    assert len(rejects) == 3 and wh.count("rejects") == before + 3
    for r, task_id, value in zip(rejects, (10, 11, 12), ("'rage'", "'AU99'", "'mood'")):
        assert f"task/{task_id}/" in r["source_uri"] and r["stage"] == "pull"
        assert value in r["detail"] and "labelstudio:5" in r["detail"]
    assert {r["reason"] for r in rejects} == {"unknown_choice", "unknown_control"}
    assert report.rejected == 3 and "3 rejected" in report.summary()
    again = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert again.rejected == 3 and wh.count("rejects") == before + 3  # the same reject is not added twice


def test_annotation_checks():
    controls = config_controls(label_config_xml())
    assert check_annotation(_annotation(1, "sad", ["AU1"]), controls) is None
    assert check_annotation({"result": []}, controls) is None
    two = {"result": [_result("emotion", ["sad", "happy"])]}
    assert check_annotation(two, controls)[0] == "too_many_choices"
    assert check_annotation({"result": [{"from_name": "aus", "value": {"choices": "AU1"}}]}, controls)[0] == (
        "malformed_result"
    )
    assert check_annotation({"result": "x"}, controls)[0] == "malformed_result"
    # A config edited on the server: a comment box is accepted (and not read), an emotion ferlab
    # does not know is not a label.
    edited = (
        label_config_xml()
        .replace('<Choice value="sad"/>', '<Choice value="sad"/><Choice value="contempt"/>')
        .replace("</View>", '<TextArea name="note" toName="image"/></View>')
    )
    controls = config_controls(edited)
    note = {"from_name": "note", "to_name": "image", "type": "textarea", "value": {"text": ["hm"]}}
    assert check_annotation({"result": [note, _result("emotion", ["sad"])]}, controls) is None
    reason, what = check_annotation({"result": [_result("emotion", ["contempt"])]}, controls)
    assert reason == "unknown_choice" and "'contempt'" in what and "ferlab" in what


def test_task_diff():
    recorded = {"c1": 1, "c2": 2, "c3": 3, "c4": 4}
    server = [(1, "c1"), (5, "c3"), (4, "c4"), (6, "c4"), (7, "c9"), (8, None)]
    diff = diff_tasks(recorded, server)
    assert diff.gone == ("c2",) and diff.unrecorded == ("c9",) and diff.pushed_again == ("c3",)
    assert diff.several == ("c4",) and diff.no_face == 1 and diff.differs
    text = "\n".join(diff.lines())
    assert "1 recorded faces have no task on the server (deleted there; c2)" in text and "push" in text
    agree = diff_tasks({"c1": 1}, [(1, "c1")])
    assert not agree.differs and agree.lines() == []


class FakeServer:
    """Stands in for Label Studio in push: one project's tasks in memory."""

    def __init__(self):
        self.settings = LabelStudioSettings(url="http://127.0.0.1:1", api_key="k")
        self.tasks: dict[int, dict] = {}
        self.next_id = 100

    def ensure_project(self, home, title=None):
        return 1

    def tasks_by_crop(self, project_id):
        out: dict[str, int] = {}
        for task_id, task in sorted(self.tasks.items()):
            out.setdefault(task["data"]["crop_id"], task_id)
        return out

    def import_tasks(self, project_id, tasks):
        for task in tasks:
            self.tasks[self.next_id] = task
            self.next_id += 1
        return len(tasks)


def test_push_again_a_face_whose_task_was_deleted(wh):
    """Issue 21, defect 7: a task deleted on the server is pushed again, not lost from the queue."""
    fill_queue(wh, 3)
    server = FakeServer()
    first = push_faces(wh, queued_faces(wh), client=server)
    assert (first.pushed, first.recorded) == (3, 3) and len(server.tasks) == 3
    del server.tasks[101]  # a curator (or an admin) deletes a task in the UI
    again = push_faces(wh, queued_faces(wh), client=server)
    assert again.pushed == 1, "the face whose task was deleted was not pushed again"
    assert again.repushed == 1 and "1 again" in again.summary()
    assert sorted(t["data"]["crop_id"] for t in server.tasks.values()) == [
        "crop00000",
        "crop00001",
        "crop00002",
    ]
    assert push_faces(wh, queued_faces(wh), client=server).pushed == 0
    diff = diff_tasks(
        {r["crop_id"]: r["task_id"] for r in wh.read("label_studio_tasks").to_pylist()},
        [(t, task["data"]["crop_id"]) for t, task in server.tasks.items()],
    )
    # the record follows the face to its new task
    assert diff == diff_tasks({}, []) and not diff.differs, diff
    assert wh.count("label_studio_tasks") == 3


def test_queued_faces_say_why_they_are_queued(wh):
    crops = fill_queue(wh, 3)
    rows = queued_faces(wh)
    assert [r["crop_id"] for r in rows] == crops  # highest priority first
    # crop 1 is queued again by the AU queue, with a higher priority and a detail
    again = dict(wh.sql("SELECT * FROM review_queue WHERE crop_id = ?", [crops[1]]).to_pylist()[0])
    again.update(queue="au:au-m2", reason="between_thresholds", priority=9.0, detail="AU4 0.50")
    wh.append("review_queue", _table("review_queue", [again]))
    rows = {r["crop_id"]: r for r in queued_faces(wh)}
    face = rows[crops[1]]
    assert face["queues"] == ["au:au-m2", "q1"] and face["reasons"] == ["between_thresholds", "uncertain"]
    assert face["details"] == ["between_thresholds: AU4 0.50", "uncertain"] and face["priority"] == 9.0
    assert face["source"] == "scraped" and face["weak_label"] == "happy"  # the image's folder label
    assert [r["crop_id"] for r in queued_faces(wh, "au:au-m2")] == [crops[1]]
    data = task_data(face)
    assert (data["queue"], data["reasons"], data["weak_label"]) == (
        "au:au-m2, q1",
        "between_thresholds, uncertain",
        "happy",
    )


def _production_models(wh, crops: list[str]) -> None:
    """Hand-made production models (tests.conftest): cuts 0.8 (emotion) and 0.1 / 0.9 (AUs); crop 0
    happy for sure with AU1 and AU12 present and AU4 unsure, crop 1 unsure of its emotion (sad
    0.5) with AU6 present, the others neutral for sure, no AU present."""
    emotions = {c: {"neutral": 0.9} for c in crops}
    aus = {c: {} for c in crops}
    emotions[crops[0]], aus[crops[0]] = {"happy": 0.97}, {"AU1": 0.95, "AU4": 0.5, "AU12": 0.98}
    emotions[crops[1]], aus[crops[1]] = {"sad": 0.5, "fear": 0.3}, {"AU6": 0.93}
    hand_made_production_model(wh, "emotion", "emotion-hand1", emotions)
    hand_made_production_model(wh, "au", "au-hand2", aus)


def test_queue_views_are_both_production_models(wh):
    crops = fill_queue(wh, 3)
    rows = queued_faces(wh)
    assert queue_views(wh, rows) == {}  # no production model yet: no view
    _production_models(wh, crops)
    views = queue_views(wh, rows)  # every face is in the caches: no model runs
    assert set(views) == set(crops) and all(set(v) == {"emotion", "au"} for v in views.values())
    first = views[crops[0]]
    assert [c.label for c in first["au"].with_state("present")] == ["AU1", "AU12"]
    assert [c.label for c in first["au"].with_state("unsure")] == ["AU4"]
    assert first["emotion"].top.label == "happy" and first["emotion"].top.state == "present"
    made = prediction_for(first)
    assert made["model_version"] == "emotion-hand1 + au-hand2"
    assert {r["from_name"]: r["value"]["choices"] for r in made["result"]} == {
        "emotion": ["happy"],
        "aus": ["AU1", "AU12"],
    }
    second = prediction_for(views[crops[1]])  # the emotion is asked: only the AUs are pre-filled
    assert [(r["from_name"], r["value"]["choices"]) for r in second["result"]] == [("aus", ["AU6"])]


def test_stored_pseudo_labels_stand_in_when_the_models_files_are_gone(wh):
    import shutil

    from models.tasks import get_task

    crops = fill_queue(wh, 2)
    _production_models(wh, crops)
    image = {r["crop_id"]: r["image_id"] for r in queued_faces(wh)}
    common = {"image_id": image[crops[0]], "crop_id": crops[0], "label_source": "pseudo"}
    pseudo = [common | {"emotion": "happy", "confidence": 0.97, "annotator": "emotion-hand1"}]
    wh.append("emotion_labels", _table("emotion_labels", pseudo))
    au = [
        common | {"au": 1, "present": True, "probability": 0.95, "annotator": "au-hand2"},
        common | {"au": 26, "present": False, "probability": 0.02, "annotator": "au-hand2"},
        common | {"au": 12, "present": True, "probability": 0.9, "annotator": "another-model"},
    ]
    wh.append("au_labels", _table("au_labels", au))
    shutil.rmtree(wh.home / "models")  # the models' files are gone; their promotions stand
    views = queue_views(wh, queued_faces(wh))
    assert set(views) == {crops[0]}  # crop 1 has no pseudo label
    emotion, aus = views[crops[0]]["emotion"], views[crops[0]]["au"]
    assert [(c.label, c.probability, c.state) for c in emotion.calls] == [("happy", 0.97, "present")]
    states = {c.label: c.state for c in aus.calls}
    assert states["AU1"] == "present" and states["AU26"] == "absent" and states["AU12"] == "unsure"
    assert set(states) == set(get_task("au").labels) and aus.model_id == "au-hand2"
    data = task_data(queued_faces(wh)[0], views[crops[0]])
    assert {"upper face AU": "AU2 outer brow raiser", "p": "?", "call": "UNSURE — asked"} in data[
        "model_aus_upper"
    ]
    assert stored_views(wh, crops, "emotion", "another-model") == {}


# ---- against the real server -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, port: int, key: str, log: Path, proc):
        self.home, self.port, self.key, self.log, self.proc = home, port, key, log, proc
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str | None = None) -> LabelStudioClient:
        return LabelStudioClient(LabelStudioSettings(url=self.url, api_key=key or self.key))


@pytest.fixture(scope="module")
def ls_server(tmp_path_factory):
    """The server as a user starts it: `ferlab labelstudio serve --port N` (which execs Label Studio),
    in its own process group, stopped by that group."""
    import subprocess
    import sys

    from labeling.labelstudio.server import find_executable, stop_server, wait_healthy

    try:
        find_executable()
    except ConfigError as exc:
        pytest.fail(f"{exc} (`make test` builds it)")
    root = tmp_path_factory.mktemp("labelstudio")
    (root / "home").mkdir()
    key = secrets.token_hex(20)
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "LABEL_STUDIO_API_KEY": key,
    }  # ~/.config/label-studio: there
    port, log_path, home = _free_port(), root / "labelstudio.log", root / "var"
    command = [
        sys.executable,
        "-m",
        "ferlab",
        "--home",
        str(home),
        "labelstudio",
        "serve",
        "--port",
        str(port),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        seconds = wait_healthy(proc, port, timeout=900, log_path=str(log_path))
        print(f"Label Studio answered /health after {seconds:.0f} s")
        yield Server(home, port, key, log_path, proc)
    finally:
        stop_server(proc, grace=5)  # a server that ignores SIGTERM is killed soon: tests wait on it
        assert key not in log_path.read_text(errors="replace"), "the API key reached the server's log"


def _annotate(
    server: Server, task_id: int, emotion=None, aus=(), cancelled=False, reviewed=False, **extra
) -> int:
    """What a curator's submit sends: POST /api/tasks/{id}/annotations/ (`parent_prediction=` when
    the annotation was pre-filled with a prediction)."""
    result = _annotation(None, emotion, aus)["result"]
    if reviewed:
        result.append(_result("aus_reviewed", ["AUs reviewed"]))
    ann = server.client().sdk.annotations.create(id=task_id, result=result, was_cancelled=cancelled, **extra)
    return int(ann.id)


def _last_materialization(asset: str):
    """The newest materialization of `asset` in the Dagster instance ($DAGSTER_HOME: the tests')."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey(asset))
    assert event is not None, f"no materialization of {asset}"
    return event.asset_materialization


@pytest.mark.server
def test_push_annotate_pull_round_trip(ls_server, monkeypatch, capsys):
    from ferlab.cli import main

    wh = Warehouse(ls_server.home)
    crops = fill_queue(wh, 4)
    _production_models(wh, crops)  # both models' views of every queued face, whatever its queue
    views = queue_views(wh, queued_faces(wh))
    report = push_faces(wh, queued_faces(wh), views, client=ls_server.client())
    assert (report.pushed, report.with_prediction, report.recorded) == (4, 4, 4)
    task_of = {r["crop_id"]: r["task_id"] for r in wh.read("label_studio_tasks").to_pylist()}
    assert set(task_of) == set(crops)
    sdk = ls_server.client().sdk
    task = sdk.tasks.get(id=str(task_of[crops[0]]))
    # The Data Manager's columns: the readable ones first; crop_id (pull reads it) kept
    assert list(task.data)[:6] == ["queue", "reasons", "priority", "weak_label", "source", "asked"]
    assert (task.data["queue"], task.data["reasons"], task.data["weak_label"], task.data["source"]) == (
        "q1",
        "uncertain",
        "happy",
        "scraped",
    )
    assert task.data["priority"] == 4.0 and task.data["crop_id"] == crops[0]
    assert task.data["asked"] == "Asked, the models are unsure: AU4 brow lowerer (0.50)"
    # The labeling view's tables: every label's probability and the model's call
    assert {"upper face AU": "AU4 brow lowerer", "p": "0.50", "call": "UNSURE — asked"} in task.data[
        "model_aus_upper"
    ]
    assert task.data["model_emotions"][0] == {"emotion": "happy", "p": "0.97", "call": "present (pre-filled)"}
    assert len(task.data["model_emotions"]) == 7
    assert len(task.data["model_aus_upper"]) + len(task.data["model_aus_lower"]) == 12  # the choices' AUs
    assert {"lower face AU": "AU15 lip corner depressor", "p": "—", "call": "not predicted"} in task.data[
        "model_aus_lower"
    ]  # AU models predict the seed's 8 AUs
    # One prediction, both models' calls: the AUs called present pre-ticked, AU4 (unsure) not
    [pred] = sdk.predictions.list(task=task_of[crops[0]])
    assert pred.model_version == "emotion-hand1 + au-hand2" and 0.9 < pred.score < 1
    assert {r["from_name"]: r["value"]["choices"] for r in pred.result} == {
        "emotion": ["happy"],
        "aus": ["AU1", "AU12"],
    }
    [asked] = sdk.predictions.list(task=task_of[crops[1]])  # its emotion is asked: AUs only
    assert [(r["from_name"], r["value"]["choices"]) for r in asked.result] == [("aus", ["AU6"])]
    project = sdk.projects.get(id=report.project_id)  # the labeling stream pre-fills this version
    assert project.model_version == "emotion-hand1 + au-hand2"
    # The server takes ferlab's label config (its validation refuses a broken one) and the tab
    sdk.projects.validate_label_config(id=report.project_id, label_config=label_config_xml())
    from label_studio_sdk.core.api_error import ApiError

    with pytest.raises(ApiError):
        sdk.projects.validate_label_config(
            id=report.project_id,
            label_config=label_config_xml().replace('toName="image"', 'toName="face"', 1),
        )
    assert project.label_config.strip() == label_config_xml().strip()
    assert [(v.data or {}).get("title") for v in sdk.views.list(project=report.project_id)] == [
        "ferlab queue"
    ]
    # The crop is served by Label Studio, byte for byte.
    req = urllib.request.Request(
        ls_server.url + task.data["image"], headers={"Authorization": f"Token {ls_server.key}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read() == wh.path(queued_faces(wh)[0]["media_path"]).read_bytes()

    # Re-push through the CLI: nothing new, on the server or in the warehouse.
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.key)
    assert main(["--home", str(ls_server.home), "labelstudio", "push"]) == 0
    assert "0 tasks pushed" in capsys.readouterr().out
    recorded = _last_materialization("label_studio_tasks")  # the CLI run shows in the Dagster UI
    assert recorded.description == "ferlab labelstudio push" and recorded.metadata["tasks_pushed"].value == 0
    assert recorded.metadata["tasks_total"].value == 4
    assert sdk.projects.get(id=report.project_id).task_number == 4 and wh.count("label_studio_tasks") == 4

    # Curators: a full label (the AU choices store their bare codes, the alias: what the UI submits
    # for "AU4 brow lowerer"), an emotion only (on a task pre-filled with AU6: the UI submits the
    # prefill's AU ticks with it), a skip, and values the label config does not have (the server
    # takes them).
    first = _annotate(ls_server, task_of[crops[0]], "sad", ["AU1", "AU4", "AU15"], reviewed=True)
    _annotate(ls_server, task_of[crops[1]], "neutral", ["AU6"], parent_prediction=int(asked.id))
    _annotate(ls_server, task_of[crops[2]], cancelled=True)
    _annotate(ls_server, task_of[crops[3]], "rage", ["AU99"])
    pulled = pull_annotations(wh, client=ls_server.client())
    assert (pulled.annotations, pulled.skipped, pulled.emotion_added, pulled.au_added) == (2, 1, 2, 12)
    assert pulled.rejected == 1 and "1 rejected" in pulled.summary()
    reject = wh.sql("SELECT source_uri, reason, detail FROM rejects WHERE source = 'labelstudio'").to_pylist()
    assert len(reject) == 1 and f"/task/{task_of[crops[3]]}/" in reject[0]["source_uri"]
    assert reject[0]["reason"] == "unknown_choice" and "'rage'" in reject[0]["detail"]
    me = ls_server.client().check()["id"]
    assert set(
        wh.sql("SELECT annotator FROM au_labels WHERE label_source = 'human'").column(0).to_pylist()
    ) == {f"labelstudio:{me}"}
    again_cli = main(["--home", str(ls_server.home), "labelstudio", "pull"])
    assert again_cli == 0 and "+0 ~0, AU labels +0 ~0" in capsys.readouterr().out
    recorded = _last_materialization("label_studio_annotations")
    assert recorded.description == "ferlab labelstudio pull"
    assert recorded.metadata["annotations"].value == 2 and recorded.metadata["au_labels_added"].value == 0

    # The human label wins in the next dataset version.
    rows = {r["crop_id"]: r for r in build_manifest(wh).to_pylist()}
    assert (rows[crops[0]]["emotion"], rows[crops[0]]["emotion_source"]) == ("sad", "human")
    assert (
        rows[crops[0]]["au1"]
        and rows[crops[0]]["au4"]
        and rows[crops[0]]["au15"]
        and not rows[crops[0]]["au12"]
    )
    assert rows[crops[1]]["emotion"] == "neutral" and rows[crops[1]]["au_source"] != "human"
    assert rows[crops[3]]["emotion_source"] != "human" and rows[crops[3]]["au_source"] != "human"
    assert (rows[crops[2]]["emotion"], rows[crops[2]]["emotion_source"]) == ("happy", "weak")  # skipped
    v1 = snapshot_dataset_version(wh)
    assert v1.created

    # An updated annotation replaces the earlier one: AU4 un-ticked becomes absent.
    sdk.annotations.update(id=first, result=_annotation(None, "angry", ["AU1", "AU15"])["result"])
    updated = pull_annotations(wh, client=ls_server.client())
    assert (updated.emotion_added, updated.emotion_updated, updated.au_added, updated.au_updated) == (
        0,
        1,
        0,
        1,
    )
    row = {r["crop_id"]: r for r in build_manifest(wh).to_pylist()}[crops[0]]
    assert row["emotion"] == "angry" and row["au1"] and not row["au4"]
    assert snapshot_dataset_version(wh, parent=v1.version).version != v1.version

    assert main(["--home", str(ls_server.home), "labelstudio", "status"]) == 0
    out = capsys.readouterr().out
    assert "4 tasks (4 recorded" in out and "the server's tasks and the record agree" in out

    # A task deleted on the server: status says so, push pushes the face again.
    sdk.tasks.delete(id=str(task_of[crops[2]]))
    assert main(["--home", str(ls_server.home), "labelstudio", "status"]) == 0
    out = capsys.readouterr().out
    assert (
        "3 tasks (4 recorded" in out
        and f"1 recorded faces have no task on the server (deleted there; {crops[2]})" in out
    )
    assert main(["--home", str(ls_server.home), "labelstudio", "push"]) == 0
    assert "1 tasks pushed" in (out := capsys.readouterr().out) and "1 again" in out
    assert crops[2] in ls_server.client().tasks_by_crop(report.project_id)
    assert main(["--home", str(ls_server.home), "labelstudio", "status"]) == 0
    out = capsys.readouterr().out  # the record follows the face to its new task
    assert "4 tasks (4 recorded" in out and "the server's tasks and the record agree" in out
    new_task = ls_server.client().tasks_by_crop(report.project_id)[crops[2]]
    assert {r["crop_id"]: r["task_id"] for r in wh.read("label_studio_tasks").to_pylist()}[
        crops[2]
    ] == new_task


@pytest.mark.server
def test_push_killed_before_recording_imports_nothing_twice(ls_server, tmp_path):
    wh = Warehouse(ls_server.home)
    client, title = ls_server.client(), "ferlab faces (killed push)"
    rows = queued_faces(wh)
    # A project made by an earlier ferlab (bare AU codes, no models' tables, no AU confirmation),
    # answered already: ensure_project brings its label config up to date, the answers stay valid.
    old_config = OLD_CONFIG.split('  <Choices name="aus_reviewed"')[0] + "</View>\n"
    assert set(config_controls(old_config)) == {"emotion", "aus"}
    made = client.sdk.projects.create(title=title, label_config=old_config)
    # A push that imported two faces (as the earlier ferlab did) and died before writing
    # label_studio_tasks; a curator answered the first with the bare codes of the old choices.
    client.import_tasks(
        made.id,
        [{"data": {"image": "x", "crop_id": r["crop_id"], "image_id": r["image_id"]}} for r in rows[:2]],
    )
    old_task = client.tasks_by_crop(made.id)[rows[0]["crop_id"]]
    _annotate(ls_server, old_task, "fear", ["AU4", "AU26"])
    report = push_faces(wh, rows, client=client, title=title)
    assert report.project_id == made.id
    assert (report.pushed, report.already, report.recorded) == (len(rows) - 2, 2, len(rows))
    assert client.sdk.projects.get(id=made.id).task_number == len(rows)
    config = client.label_config(made.id)
    assert config.strip() == label_config_xml().strip() and "aus_reviewed" in config_controls(config)
    assert [(v.data or {}).get("title") for v in client.sdk.views.list(project=made.id)] == ["ferlab queue"]
    # The old answer, exported under the new config, fits it and reads "AU4" as before.
    [exported] = [t for t in client.export_annotated(made.id) if t["id"] == old_task]
    answer = exported["annotations"][0]
    assert check_annotation(answer, config_controls(config)) is None
    assert labels_from_annotation(rows[0]["crop_id"], answer).aus_present == {"AU4", "AU26"}
    other = Warehouse(tmp_path / "other")  # the same faces in another data root: pull records AU4
    fill_queue(other, 2)
    pulled = pull_annotations(other, client=client, project_id=made.id)
    assert (pulled.annotations, pulled.au_added, pulled.rejected) == (1, 12, 0)
    present = other.sql("SELECT au FROM au_labels WHERE label_source = 'human' AND present ORDER BY au")
    assert present.column(0).to_pylist() == [4, 26]
    assert client.ensure_project(wh.home, title) == made.id  # up to date: nothing to change
    assert client.label_config(made.id).strip() == label_config_xml().strip()


@pytest.mark.server
def test_dagster_assets_and_sensor(ls_server, tmp_path):
    from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context, materialize

    from assets.labelstudio import label_studio_annotations, label_studio_tasks
    from assets.resources import LabelStudioResource, WarehouseResource
    from dagster_project.sensors import label_studio_sensor

    title = "ferlab faces (dagster test)"  # a project of its own; the warehouse's faces are queued already
    resources = {
        "warehouse": WarehouseResource(home=str(ls_server.home)),
        "labelstudio": LabelStudioResource(url=ls_server.url, api_key=ls_server.key, project_title=title),
    }
    wh = Warehouse(ls_server.home)
    with DagsterInstance.ephemeral() as instance:
        pushed = materialize([label_studio_tasks], resources=resources, instance=instance)
        meta = pushed.asset_materializations_for_node("label_studio_tasks")[0].metadata
        assert meta["tasks_pushed"].value == meta["faces_queued"].value == 4
        project_id = meta["project_id"].value

        def tick(cursor):
            context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            return label_studio_sensor(context), context.cursor

        _, cursor = tick(None)  # the first look: nothing annotated yet, but a state to compare with
        assert isinstance(tick(cursor)[0], SkipReason)
        task_id = wh.sql(  # the one face the round trip test left unannotated
            "SELECT task_id FROM label_studio_tasks WHERE project_id = ? AND crop_id = 'crop00003'",
            [project_id],
        )
        _annotate(ls_server, int(task_id.column(0)[0].as_py()), "fear", ["AU5"])
        request, cursor = tick(cursor)
        assert isinstance(request, RunRequest) and isinstance(tick(cursor)[0], SkipReason)

        pulled = materialize([label_studio_annotations], resources=resources, instance=instance)
        meta = pulled.asset_materializations_for_node("label_studio_annotations")[0].metadata
        assert (
            meta["annotations"].value,
            meta["au_labels_added"].value,
            meta["emotion_labels_added"].value,
        ) == (
            1,
            12,
            1,
        )
    down = {"labelstudio": LabelStudioResource(url=f"http://127.0.0.1:{_free_port()}", api_key="k")}
    with DagsterInstance.ephemeral() as instance:
        skip = label_studio_sensor(build_sensor_context(instance=instance, resources=down))
    assert isinstance(skip, SkipReason) and "not reachable" in skip.skip_message


@pytest.mark.server
def test_wrong_token_and_stopped_server_are_clear_errors(ls_server, tmp_path, capsys, monkeypatch):
    from ferlab.cli import main
    from labeling.labelstudio.server import stop_server

    wh = Warehouse(ls_server.home)
    before = {t: wh.count(t) for t in ("emotion_labels", "au_labels", "label_studio_tasks")}
    bad = ls_server.client(key="0" * 40)
    with pytest.raises(ConfigError, match="refused the token") as err:
        pull_annotations(wh, client=bad)
    assert ls_server.url in str(err.value) and "0" * 40 not in str(err.value)
    with pytest.raises(ConfigError, match="refused the token"):
        push_faces(wh, queued_faces(wh), client=bad)
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    assert main(["--home", str(ls_server.home), "labelstudio", "pull"]) == 2
    err_line = capsys.readouterr().err.strip()
    assert err_line.startswith("error: Label Studio at") and len(err_line.splitlines()) == 1

    stop_server(ls_server.proc, grace=5)  # the last test of the module: the fixture's stop is then a no-op
    with pytest.raises(LabelStudioError, match="not reachable at") as down:
        pull_annotations(wh, client=ls_server.client())
    assert "ferlab labelstudio serve" in str(down.value)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.key)
    assert main(["--home", str(ls_server.home), "labelstudio", "push"]) == 1
    assert "not reachable at " + ls_server.url in capsys.readouterr().err
    assert {t: wh.count(t) for t in before} == before  # nothing lost, nothing half-written


def test_the_server_is_looked_for_in_the_repositorys_own_virtualenv():
    """`make labelstudio-setup` builds <repo>/.venv-labelstudio: the path is the repository's."""
    from labeling.labelstudio import server

    assert Path(__file__).resolve().parents[1] == server.REPO
