"""Label Studio: the label config and the annotation -> label conversion on their own, then the
whole round trip against a real server (its own virtualenv, started here on a free port on
127.0.0.1 in its own process group): push a queue, annotate through the REST API as a curator
would, pull, and find the human labels winning in the next dataset version."""

from __future__ import annotations

import os
import secrets
import socket
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.labelstudio_roundtrip import fill_queue
from labeling.labelstudio.sync import (
    AU_NAMES,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioSettings,
    check_annotation,
    config_controls,
    diff_tasks,
    label_config_xml,
    label_tables,
    labels_from_annotation,
    prediction_for,
    predictions_for,
    pull_annotations,
    push_faces,
    queued_faces,
)
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.schemas import DISFA_AUS, EMOTIONS, TABLES
from warehouse.versions import build_manifest, snapshot_dataset_version


# ---- a warehouse with faces in the review queue: benchmarks.labelstudio_roundtrip.fill_queue ----------
def _table(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[name].schema)  # columns left out are null


# ---- no server -------------------------------------------------------------------------------------
def test_label_config():
    root = ET.fromstring(label_config_xml())
    image = root.find("Image")
    assert image.get("name") == "image" and image.get("value") == "$image"
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert choices["emotion"].get("choice") == "single" and choices["aus"].get("choice") == "multiple"
    assert [c.get("value") for c in choices["emotion"]] == list(EMOTIONS)
    assert [c.get("value") for c in choices["aus"]] == [f"AU{n}" for n in DISFA_AUS]
    assert [c.get("value") for c in choices["aus_reviewed"]] == ["AUs reviewed"]
    controls = config_controls(label_config_xml())
    assert set(controls) == {"emotion", "aus", "aus_reviewed"} and controls["aus"].multiple
    assert not controls["emotion"].multiple and controls["emotion"].values == set(EMOTIONS)
    with pytest.raises(ConfigError, match="not valid XML"):
        config_controls("<View><Choices", "the label config of project 3")
    assert AU_NAMES[0] == "AU1" and AU_NAMES[-1] == "AU26" and len(AU_NAMES) == 12


def test_prediction_prefill():
    p = prediction_for(
        {"emotion": {"sad": 0.7, "happy": 0.3}, "aus": {"AU1": 0.9, "AU4": 0.5, "AU12": 0.1}}, "m1"
    )
    assert p["model_version"] == "m1" and p["score"] == pytest.approx(0.7)
    by_name = {r["from_name"]: r["value"]["choices"] for r in p["result"]}
    assert by_name == {"emotion": ["sad"], "aus": ["AU1", "AU4"]}
    only_aus = prediction_for({"aus": {"AU1": 0.9, "AU2": 0.2}}, "m2")
    assert only_aus["score"] == pytest.approx(0.85) and len(only_aus["result"]) == 1
    assert prediction_for({}, "m") is None


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


def test_queue_and_stored_predictions(wh):
    crops = fill_queue(wh, 3)
    rows = queued_faces(wh)
    assert [r["crop_id"] for r in rows] == crops  # highest priority first
    pseudo = [
        {"image_id": rows[0]["image_id"], "crop_id": crops[0], "emotion": "fear", "label_source": "pseudo"}
        | {"confidence": 0.6, "annotator": "emo-model-1"}
    ]
    wh.append("emotion_labels", _table("emotion_labels", pseudo))
    au = [
        {
            "image_id": rows[0]["image_id"],
            "crop_id": crops[0],
            "au": 12,
            "present": True,
            "label_source": "pseudo",
        }
        | {"probability": 0.8, "annotator": "emo-model-1"}
    ]
    wh.append("au_labels", _table("au_labels", au))
    assert predictions_for(wh, crops, "emo-model-1") == {
        crops[0]: {"emotion": {"fear": 0.6}, "aus": {"AU12": 0.8}}
    }
    assert predictions_for(wh, crops, "another-model") == {}


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
    preds = {
        crops[0]: {"emotion": {"surprise": 0.9}, "aus": {"AU1": 0.8, "AU2": 0.7, "AU26": 0.6}},
        crops[1]: {"aus": {"AU12": 0.9, "AU4": 0.1}},
    }
    report = push_faces(wh, queued_faces(wh), preds, client=ls_server.client())
    assert (report.pushed, report.with_prediction, report.recorded) == (4, 2, 4)
    task_of = {r["crop_id"]: r["task_id"] for r in wh.read("label_studio_tasks").to_pylist()}
    assert set(task_of) == set(crops)
    sdk = ls_server.client().sdk
    task = sdk.tasks.get(id=str(task_of[crops[0]]))
    assert task.data["crop_id"] == crops[0]
    pred = sdk.predictions.list(task=task_of[crops[0]])[0]
    assert pred.model_version == "emo-model-1" and pred.score == pytest.approx(0.9)
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

    # Curators: a full label, an emotion only (on a task pre-filled with AU12: the UI submits the
    # prefill's AU ticks with it), a skip, and values the label config does not have (the server
    # takes them).
    first = _annotate(ls_server, task_of[crops[0]], "sad", ["AU1", "AU4", "AU15"], reviewed=True)
    prefill = sdk.predictions.list(task=task_of[crops[1]])[0]
    _annotate(ls_server, task_of[crops[1]], "neutral", ["AU12"], parent_prediction=int(prefill.id))
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
def test_push_killed_before_recording_imports_nothing_twice(ls_server):
    wh = Warehouse(ls_server.home)
    client, title = ls_server.client(), "ferlab faces (killed push)"
    rows = queued_faces(wh)
    # Made with the label config of before the AU confirmation: ensure_project brings it up to date.
    old_config = label_config_xml().split('  <Choices name="aus_reviewed"')[0] + "</View>\n"
    assert set(config_controls(old_config)) == {"emotion", "aus"}
    made = client.sdk.projects.create(title=title, label_config=old_config)
    project_id = client.ensure_project(wh.home, title)
    assert project_id == made.id and "aus_reviewed" in config_controls(client.label_config(project_id))
    # A push that imported two faces and died before writing label_studio_tasks:
    client.import_tasks(project_id, [{"data": {"image": "x", "crop_id": r["crop_id"]}} for r in rows[:2]])
    report = push_faces(wh, rows, client=client, title=title)
    assert (report.pushed, report.already, report.recorded) == (len(rows) - 2, 2, len(rows))
    assert client.sdk.projects.get(id=project_id).task_number == len(rows)


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
