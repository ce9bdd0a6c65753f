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
    """Stands in for the server in pull: returns a fixed export."""

    def __init__(self, tasks):
        self.tasks = tasks

    def export_annotated(self, project_id):
        return self.tasks


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
        stop_server(proc)
        assert key not in log_path.read_text(errors="replace"), "the API key reached the server's log"


def _annotate(server: Server, task_id: int, emotion=None, aus=(), cancelled=False) -> int:
    """What a curator's submit sends: POST /api/tasks/{id}/annotations/."""
    result = _annotation(None, emotion, aus)["result"]
    ann = server.client().sdk.annotations.create(id=task_id, result=result, was_cancelled=cancelled)
    return int(ann.id)


@pytest.mark.server
def test_push_annotate_pull_round_trip(ls_server, monkeypatch, capsys):
    from ferlab.cli import main

    wh = Warehouse(ls_server.home)
    crops = fill_queue(wh, 4)
    preds = {crops[0]: {"emotion": {"surprise": 0.9}, "aus": {"AU1": 0.8, "AU2": 0.7, "AU26": 0.6}}}
    report = push_faces(wh, queued_faces(wh), preds, client=ls_server.client())
    assert (report.pushed, report.with_prediction, report.recorded) == (4, 1, 4)
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
    assert sdk.projects.get(id=report.project_id).task_number == 4 and wh.count("label_studio_tasks") == 4

    # Curators: a full label, an emotion only, a skip.
    first = _annotate(ls_server, task_of[crops[0]], "sad", ["AU1", "AU4", "AU15"])
    _annotate(ls_server, task_of[crops[1]], "neutral")
    _annotate(ls_server, task_of[crops[2]], cancelled=True)
    pulled = pull_annotations(wh, client=ls_server.client())
    assert (pulled.annotations, pulled.skipped, pulled.emotion_added, pulled.au_added) == (2, 1, 2, 24)
    me = ls_server.client().check()["id"]
    assert set(
        wh.sql("SELECT annotator FROM au_labels WHERE label_source = 'human'").column(0).to_pylist()
    ) == {f"labelstudio:{me}"}
    again_cli = main(["--home", str(ls_server.home), "labelstudio", "pull"])
    assert again_cli == 0 and "+0 ~0, AU labels +0 ~0" in capsys.readouterr().out

    # The human label wins in the next dataset version.
    rows = {r["crop_id"]: r for r in build_manifest(wh).to_pylist()}
    assert (rows[crops[0]]["emotion"], rows[crops[0]]["emotion_source"]) == ("sad", "human")
    assert (
        rows[crops[0]]["au1"]
        and rows[crops[0]]["au4"]
        and rows[crops[0]]["au15"]
        and not rows[crops[0]]["au12"]
    )
    assert rows[crops[1]]["emotion"] == "neutral" and rows[crops[1]]["au_source"] == "human"
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
    assert "4 tasks (4 recorded" in capsys.readouterr().out


@pytest.mark.server
def test_push_killed_before_recording_imports_nothing_twice(ls_server):
    wh = Warehouse(ls_server.home)
    client, title = ls_server.client(), "ferlab faces (killed push)"
    rows = queued_faces(wh)
    project_id = client.ensure_project(wh.home, title)
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

    stop_server(ls_server.proc)  # the last test of the module: the fixture's stop is then a no-op
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
