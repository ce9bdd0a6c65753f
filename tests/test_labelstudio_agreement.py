"""Several curators per face (labeling.labelstudio.agreement): the agreement statistics against
hand-computed textbook figures, the consensus rules, and then a real Label Studio server with two
curators created through its API, each submitting with their own token on tasks given to both:
both answers kept, agreement figures as computed by hand, the consensus deciding what every reader
takes, disagreements queued for review, and a second pull adding nothing."""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
from fractions import Fraction

import pytest

from benchmarks.labelstudio_roundtrip import fill_queue
from labeling.labelstudio.agreement import (
    DISAGREEMENT,
    QUEUE,
    Answers,
    agreement_table,
    consensus,
    krippendorff_alpha,
    outcomes,
    pairwise_kappa,
    percent_agreement,
    read_answers,
)
from labeling.labelstudio.sync import pull_annotations, push_faces, queued_faces
from tests.test_labelstudio import FakeClient, Server, _annotation, _free_port, _result
from warehouse import Warehouse
from warehouse.errors import ConfigError
from warehouse.precedence import CONSENSUS_ANNOTATOR
from warehouse.store import LabelWrite
from warehouse.versions import build_manifest

NAN = float("nan")


def _units(*columns: str) -> list[dict[str, str]]:
    """Reliability data as Krippendorff writes it: one string per annotator, one character per
    unit, '.' for a missing value."""
    return [{f"r{i}": c for i, c in enumerate(unit) if c != "."} for unit in zip(*columns, strict=True)]


# ---- the statistics, no server ----------------------------------------------------------------------
def test_krippendorff_alpha_textbook_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", C: nominal data, four
    # observers, 12 units, missing values. Pairable values n = 40 (unit 12 has one value);
    # n_c = 9, 13, 10, 5, 3 (values 1..5), so sum_{c!=k} n_c n_k = 40^2 - 384 = 1216. Disagreeing
    # coincidences: unit 6 (1, 2, 3, 4) 12 ordered pairs / 3 = 4; unit 2 (2, 3, 2, 2) 6 / 3 = 2;
    # unit 8 (1, 1, 2, 1) 6 / 3 = 2: 8 in all. alpha = 1 - 39 * 8 / 1216 = 0.743 (the paper's).
    units = _units(
        "123321412...",  # observer A
        "1233224125.3",  # B
        ".3332342251.",  # C
        "12332441251.",  # D
    )
    assert krippendorff_alpha(units) == pytest.approx(1 - 39 * 8 / 1216)
    assert round(krippendorff_alpha(units), 3) == 0.743


def test_kappa_and_percent_agreement_by_hand():
    # Two annotators, 50 faces: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = 0.7;
    # p(yes) 0.5 and 0.6, so p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 and kappa = (0.7 - 0.5) / 0.5 = 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    units = [{"a": x, "b": y} for x, y in pairs]
    assert percent_agreement(units) == pytest.approx(0.7)
    assert pairwise_kappa(units) == (pytest.approx(0.4), 1)
    # alpha over the same data: n = 100, n_yes = 55, n_no = 45, 15 disagreeing faces = 30
    # coincidences: 1 - 99 * 30 / (2 * 55 * 45) = 0.4.
    assert krippendorff_alpha(units) == pytest.approx(1 - 99 * 30 / (2 * 55 * 45))

    # Three annotators: Light's kappa is the mean of the three pairwise Cohen's kappas.
    three = [{"a": "x", "b": "x", "c": "x"}, {"a": "x", "b": "y", "c": "y"}, {"a": "y", "b": "y", "c": "x"}]
    # a-b: (x,x) (x,y) (y,y): p_o 2/3, p_e 2/3 * 1/3 + 1/3 * 2/3 = 4/9: kappa (2/3 - 4/9) / (5/9) = 2/5
    # a-c: (x,x) (x,y) (y,x): p_o 1/3, p_e 2/3 * 2/3 + 1/3 * 1/3 = 5/9: kappa (1/3 - 5/9) / (4/9) = -1/2
    # b-c: (x,x) (y,y) (y,x): p_o 2/3, p_e 1/3 * 2/3 + 2/3 * 1/3 = 4/9: kappa 2/5
    assert pairwise_kappa(three) == (pytest.approx((0.4 - 0.5 + 0.4) / 3), 3)
    # per face the share of agreeing pairs: 1, 1/3, 1/3
    assert percent_agreement(three) == pytest.approx(5 / 9)


def test_undefined_figures_are_nan_and_missing_answers_are_left_out():
    same = [{"a": True, "b": True}, {"a": True, "b": True, "c": True}]
    assert percent_agreement(same) == 1.0
    assert math.isnan(pairwise_kappa(same)[0]) and math.isnan(krippendorff_alpha(same))
    assert math.isnan(percent_agreement([{"a": True}])) and math.isnan(krippendorff_alpha([{"a": 1}]))
    assert krippendorff_alpha([{"a": 1, "b": 1, "c": None}, {"a": 2, "b": 2}]) == 1.0


def test_consensus_rules():
    assert consensus({"a": "sad", "b": "sad", "c": "angry"}, "majority") == ("sad", 2 / 3, 2 / 3)
    assert consensus({"a": "sad", "b": "sad", "c": "angry"}, "unanimous") == ("sad", 2 / 3, 1.0)
    # two annotators: a majority is both; a tie names the first value in EMOTIONS order, unmet
    assert consensus({"a": "sad", "b": "angry"}, "majority") == ("angry", 0.5, 1.0)
    assert consensus({"a": True, "b": False, "c": True, "d": False}, "majority") == (False, 0.5, 0.75)
    with pytest.raises(ConfigError, match="unknown consensus rule"):
        consensus({"a": "sad"}, "most")
    found = outcomes(Answers({"emotion": {"c1": {"a": "sad", "b": "sad"}, "c2": {"a": "sad"}}}))
    assert [(o.crop_id, o.value, o.met) for o in found] == [("c1", "sad", True)]  # c2: one answer


# ---- pull with several annotators, no server ------------------------------------------------------------
def _answer(user, emotion=None, aus=None):
    """An annotation of `user`: the emotion and, when `aus` is given, those AUs with the
    confirmation that all were reviewed (the others absent)."""
    ann = _annotation(user, emotion, aus or ())
    if aus is not None:
        ann["result"].append(_result("aus_reviewed", ["AUs reviewed"]))
    return ann


def _manifest(wh) -> dict[str, dict]:
    return {r["crop_id"]: r for r in build_manifest(wh).to_pylist()}


def _readers_agree(wh, crops) -> None:
    """The FiftyOne view picks the emotion the dataset version does (one precedence)."""
    from labeling.fiftyone.docs import read_warehouse

    rows = _manifest(wh)
    faces = {f.crop_id: f for im in read_warehouse(wh).values() for f in im.faces}
    for c in crops:
        assert (faces[c].emotion, faces[c].label_source) == (rows[c]["emotion"], rows[c]["emotion_source"])


def test_pull_keeps_every_answer_and_the_consensus_decides(wh):
    crops = fill_queue(wh, 3)  # each face has a weak 'happy' folder label
    tasks = [
        {
            "data": {"crop_id": crops[0]},
            "annotations": [_answer(3, "fear", ["AU12"]), _answer(4, "fear", ["AU12"])],
        },
        {
            "data": {"crop_id": crops[1]},
            "annotations": [_answer(3, "sad", ["AU1"]), _answer(4, "sad", []), _answer(5, "angry", [])],
        },
        {"data": {"crop_id": crops[2]}, "annotations": [_answer(3, "sad"), _answer(4, "fear")]},
    ]
    first = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert (first.annotations, first.emotion_added, first.au_added) == (7, 7, 60)
    c = first.consensus
    assert (c.faces, c.agreed, c.disagreements, c.queued) == (3, 2, 1, 1)
    assert (c.emotion.added, c.au.added) == (3, 24)  # 3 faces' emotions, 2 faces x 12 AUs
    history = wh.sql(
        "SELECT annotator, emotion, recorded_at FROM emotion_labels_history WHERE crop_id = $c ORDER BY annotator",
        {"c": crops[1]},
    ).to_pylist()
    assert [(r["annotator"], r["emotion"]) for r in history] == [
        ("labelstudio:3", "sad"),
        ("labelstudio:4", "sad"),
        ("labelstudio:5", "angry"),
        (CONSENSUS_ANNOTATOR, "sad"),
    ]
    assert all(r["recorded_at"] is not None for r in history)

    rows = _manifest(wh)
    assert (rows[crops[0]]["emotion"], rows[crops[0]]["emotion_source"], rows[crops[0]]["au12"]) == (
        "fear",
        "human",
        True,
    )
    assert (rows[crops[1]]["emotion"], rows[crops[1]]["au1"], rows[crops[1]]["au_source"]) == (
        "sad",
        False,
        "human",
    )
    assert (rows[crops[2]]["emotion"], rows[crops[2]]["emotion_source"]) == ("happy", "weak")  # no consensus
    _readers_agree(wh, crops)
    queue = wh.sql("SELECT * FROM review_queue WHERE reason = $r", {"r": DISAGREEMENT}).to_pylist()
    assert [(q["queue"], q["crop_id"], q["priority"]) for q in queue] == [(QUEUE, crops[2], 1.0)]
    assert queue[0]["detail"] == "no majority consensus: emotion: labelstudio:3 sad, labelstudio:4 fear"

    again = pull_annotations(wh, FakeClient(tasks), project_id=1)
    assert (again.emotion_added, again.emotion_updated, again.au_added, again.au_updated) == (0, 0, 0, 0)
    assert (again.consensus.emotion, again.consensus.au, again.consensus.queued) == (
        LabelWrite(),
        LabelWrite(),
        0,
    )

    # Unanimous: the 2-of-3 face loses its human emotion and AU1, and is queued.
    strict = pull_annotations(wh, FakeClient(tasks), project_id=1, consensus="unanimous")
    assert (strict.consensus.agreed, strict.consensus.disagreements, strict.consensus.queued) == (1, 2, 1)
    rows = _manifest(wh)
    assert (rows[crops[1]]["emotion"], rows[crops[1]]["emotion_source"], rows[crops[1]]["au1"]) == (
        "happy",
        "weak",
        None,
    )
    assert rows[crops[0]]["emotion_source"] == "human"
    _readers_agree(wh, crops)
    assert (
        wh.sql(
            "SELECT count(*) AS n FROM emotion_labels_history WHERE crop_id = $c", {"c": crops[1]}
        ).to_pylist()[0]["n"]
        == 5
    )  # the majority outcome stays in the history


# ---- against the real server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ls_server(tmp_path_factory):
    """A server of this module's own (tests.test_labelstudio's stops its own at its end)."""
    from labeling.labelstudio.server import find_executable, start_server, stop_server, wait_healthy

    try:
        find_executable()
    except ConfigError as exc:
        pytest.fail(f"{exc} (`make test` builds it)")
    root = tmp_path_factory.mktemp("labelstudio-agreement")
    (root / "home").mkdir()
    key, port, log_path = secrets.token_hex(20), _free_port(), root / "labelstudio.log"
    proc = start_server(
        root / "var", port, key, log_path, base_env={**os.environ, "HOME": str(root / "home")}
    )
    try:
        seconds = wait_healthy(proc, port, timeout=900, log_path=str(log_path))
        print(f"Label Studio answered /health after {seconds:.0f} s")
        yield Server(root / "var", port, key, log_path, proc)
    finally:
        stop_server(proc, grace=5)


def _curator(server: Server, name: str) -> tuple[int, str]:
    """A curator created by the admin through the API (POST /api/users/), and that user's own
    token. The open-source API hands a token only to its owner (GET /api/current-user/token) and a
    user made through it has no password to sign in with, so the token is read from the server's
    database (authtoken_token, as labeling.labelstudio.server reads the admin's)."""
    from labeling.labelstudio.server import DATABASE, data_dir

    user = server.client().sdk.users.create(username=name, email=f"{name}@ferlab.local")
    con = sqlite3.connect(data_dir(server.home) / DATABASE, timeout=30)
    try:
        row = con.execute("SELECT key FROM authtoken_token WHERE user_id = ?", (int(user.id),)).fetchone()
    finally:
        con.close()
    assert row is not None, f"Label Studio made no token for user {user.id}"
    return int(user.id), str(row[0])


def _submit(client, task_id: int, emotion=None, aus=None) -> None:
    result = _answer(None, emotion, aus)["result"]
    client.sdk.annotations.create(id=task_id, result=result)


@pytest.mark.server
def test_two_curators_agreement_and_consensus(ls_server, capsys):
    from ferlab.cli import main

    wh = Warehouse(ls_server.home)
    crops = fill_queue(wh, 4)
    admin = ls_server.client()
    pushed = push_faces(wh, queued_faces(wh), {}, client=admin, overlap=2)
    project = admin.sdk.projects.get(id=pushed.project_id)
    assert (project.maximum_annotations, project.overlap_cohort_percentage) == (2, 100)
    assert not admin.set_overlap(pushed.project_id, 2)  # already so: nothing to change
    task_of = {r["crop_id"]: int(r["task_id"]) for r in wh.read("label_studio_tasks").to_pylist()}

    (a_id, a_key), (b_id, b_key) = _curator(ls_server, "coder-a"), _curator(ls_server, "coder-b")
    a, b = ls_server.client(a_key), ls_server.client(b_key)
    assert (a.check()["id"], b.check()["id"]) == (a_id, b_id)  # each submits as themself
    A, B = f"labelstudio:{a_id}", f"labelstudio:{b_id}"
    _submit(a, task_of[crops[0]], "happy", ["AU6", "AU12"])
    _submit(b, task_of[crops[0]], "happy", ["AU6", "AU12"])
    _submit(a, task_of[crops[1]], "sad", ["AU1", "AU4"])
    _submit(b, task_of[crops[1]], "angry", ["AU4"])
    _submit(a, task_of[crops[2]], "surprise")  # emotion only: no AU answer
    _submit(b, task_of[crops[2]], "surprise")
    _submit(a, task_of[crops[3]], "fear")  # one curator only

    pulled = pull_annotations(wh, client=admin)
    assert (pulled.annotations, pulled.emotion_added, pulled.au_added) == (7, 7, 48)
    assert (pulled.consensus.faces, pulled.consensus.agreed, pulled.consensus.disagreements) == (3, 2, 1)

    # Both answers kept, each with its annotator and time.
    history = wh.sql(
        "SELECT crop_id, annotator, emotion, recorded_at FROM emotion_labels_history WHERE label_source = 'human' "
        "ORDER BY crop_id, annotator"
    ).to_pylist()
    answers = {(r["crop_id"], r["annotator"]): r["emotion"] for r in history}
    assert answers == {
        (crops[0], A): "happy",
        (crops[0], B): "happy",
        (crops[0], CONSENSUS_ANNOTATOR): "happy",
        (crops[1], A): "sad",
        (crops[1], B): "angry",
        (crops[1], CONSENSUS_ANNOTATOR): "angry",  # the tie's first emotion, under its threshold
        (crops[2], A): "surprise",
        (crops[2], B): "surprise",
        (crops[2], CONSENSUS_ANNOTATOR): "surprise",
        (crops[3], A): "fear",
    }
    assert all(r["recorded_at"] is not None for r in history)

    # Agreement, by hand. Emotion over faces 0-2: a = (happy, sad, surprise), b = (happy, angry,
    # surprise): p_o = 2/3, p_e = 1/3 * 1/3 (happy) + 1/3 * 1/3 (surprise) = 2/9, kappa = (2/3 - 2/9) /
    # (7/9) = 4/7; alpha: n = 6, n_c = 2, 1, 1, 2, 2 disagreeing coincidences: 1 - 5 * 2 / (36 - 10) = 8/13.
    # AU1 over faces 0-1: a = (absent, present), b = (absent, absent): p_o 1/2, p_e 1/2 * 1 = 1/2, kappa 0;
    # alpha: n = 4, n_c = 3, 1, 2 disagreeing: 1 - 3 * 2 / (16 - 10) = 0. AU4, AU6, AU12: full agreement
    # with both values present, 1. AU2: absent throughout, kappa and alpha undefined.
    table = {r.item: r for r in agreement_table(read_answers(wh), "majority")}
    expected = {
        "emotion": (3, Fraction(2, 3), Fraction(4, 7), Fraction(8, 13), 2, 1),
        "AU1": (2, Fraction(1, 2), 0, 0, 1, 1),
        "AU4": (2, 1, 1, 1, 2, 0),
        "AU12": (2, 1, 1, 1, 2, 0),
        "AU2": (2, 1, NAN, NAN, 2, 0),
    }
    for item, (faces, percent, kappa, alpha, agreed, missed) in expected.items():
        r = table[item]
        assert (r.faces, r.annotators, r.consensus, r.disagreements) == (faces, 2, agreed, missed), item
        assert r.percent == pytest.approx(float(percent)), item
        assert r.kappa == pytest.approx(float(kappa), nan_ok=True), item
        assert r.alpha == pytest.approx(float(alpha), nan_ok=True), item
    assert table["emotion: sad"].faces == 3 and "emotion: fear" not in table  # fear: one curator

    # The consensus is what the dataset version takes; the disagreement gives no human label.
    rows = _manifest(wh)
    assert (rows[crops[0]]["emotion"], rows[crops[0]]["emotion_source"]) == ("happy", "human")
    assert rows[crops[0]]["au6"] and rows[crops[0]]["au12"] and rows[crops[0]]["au1"] is False
    assert (rows[crops[1]]["emotion"], rows[crops[1]]["emotion_source"]) == ("happy", "weak")
    assert rows[crops[1]]["au1"] is None and rows[crops[1]]["au4"] is True  # AU1 disagreed, AU4 agreed
    assert (rows[crops[2]]["emotion"], rows[crops[3]]["emotion"]) == ("surprise", "fear")
    queue = wh.sql("SELECT crop_id, detail FROM review_queue WHERE reason = 'disagreement'").to_pylist()
    assert [q["crop_id"] for q in queue] == [crops[1]]
    assert f"emotion: {A} sad, {B} angry" in queue[0]["detail"]
    assert f"AU1: {A} present, {B} absent" in queue[0]["detail"]

    # A second pull adds nothing.
    counts = {t: wh.count(t) for t in ("emotion_labels_history", "au_labels_history", "review_queue")}
    again = pull_annotations(wh, client=admin)
    assert (again.emotion_added, again.emotion_updated, again.au_added, again.au_updated) == (0, 0, 0, 0)
    assert {t: wh.count(t) for t in counts} == counts

    # A third answer (the admin's): 2 of 3 say sad. Majority: sad wins; unanimous: no human emotion.
    _submit(admin, task_of[crops[1]], "sad")
    pull_annotations(wh, client=admin, consensus="majority")
    assert (_manifest(wh)[crops[1]]["emotion"], _manifest(wh)[crops[1]]["emotion_source"]) == ("sad", "human")
    strict = pull_annotations(wh, client=admin, consensus="unanimous")
    assert (strict.consensus.agreed, strict.consensus.disagreements) == (2, 1)
    rows = _manifest(wh)
    assert (rows[crops[1]]["emotion"], rows[crops[1]]["emotion_source"]) == ("happy", "weak")
    assert (rows[crops[0]]["emotion"], rows[crops[2]]["emotion"]) == ("happy", "surprise")  # unanimous
    counts = {t: wh.count(t) for t in counts}
    pull_annotations(wh, client=admin, consensus="unanimous")
    assert {t: wh.count(t) for t in counts} == counts

    # The report, from the warehouse (no server needed).
    assert main(["--home", str(ls_server.home), "labelstudio", "agreement", "--consensus", "unanimous"]) == 0
    out = capsys.readouterr().out
    assert "3 faces answered by two annotators or more (1 without unanimous consensus)" in out
    assert "| emotion | 3 | 3 |" in out and "(Light)" in out
    folder = ls_server.home / "reports" / "labelstudio" / "agreement"
    md, html = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert "Krippendorff" in md and "<table>" in html and crops[1] in md
    for secret in (ls_server.key, a_key, b_key):
        assert secret not in md and secret not in html and secret not in out
