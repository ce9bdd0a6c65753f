"""End to end with the real Dagster: in-process, and through `dagster dev` (webserver +
daemon) started from workspace.yaml, driven over its GraphQL API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project.sensors import INTERVAL_ENV
from ferlab.demo import run_demo, write_sample_sources
from warehouse import Warehouse

pytestmark = pytest.mark.slow  # runs the demo through Dagster: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[1]


def test_demo_materializes_every_ingest_asset_in_process(tmp_path, capsys):
    home = tmp_path / "var"
    write_sample_sources(home / "sources")  # quick samples; the rendered demo data has its own tests
    assert run_demo(home, train=False) == 0
    out = capsys.readouterr().out
    assert out.count("ok     ") == 5 and "FAILED" not in out, out
    wh = Warehouse(home)
    by_source = {
        r["source"]: r["n"] for r in wh.sql("SELECT source, count(*) AS n FROM images GROUP BY 1").to_pylist()
    }
    assert (
        by_source == {"fer2013": 200, "disfa": 120, "scraped": by_source["scraped"]}
        and by_source["scraped"] > 0
    )
    assert wh.count("au_labels") == 120 * 12
    # Every image went through auto-labeling: FER-2013 as full-image faces, the rest detected.
    crops = {
        r["source"]: r["n"]
        for r in wh.sql(
            "SELECT i.source, count(DISTINCT c.image_id) AS n FROM crops c JOIN images i USING (image_id) GROUP BY 1"
        ).to_pylist()
    }
    assert crops["fer2013"] == 200 and crops["disfa"] >= 0.9 * 120
    before = {
        t: wh.count(t) for t in ("images", "emotion_labels", "au_labels", "rejects", "detections", "crops")
    }
    assert run_demo(home, train=False) == 0  # materializing again adds nothing
    assert {t: wh.count(t) for t in before} == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        payload = json.load(resp)
    assert "errors" not in payload, payload
    return payload["data"]


RUNS = """query Runs($job: String!) { runsOrError(filter: {pipelineName: $job}) {
  ... on Runs { results { runId status tags { key value } } } } }"""


def _runs(port: int, job: str) -> list[dict]:
    return _graphql(port, RUNS, {"job": job})["runsOrError"]["results"]


def _wait(predicate, timeout: float, what: str, log: Path | None = None):
    """Poll until `predicate` holds; waits are minutes, since CI machines are shared and slow.
    A time-out fails with the tail of the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@contextlib.contextmanager
def _dagster_server(
    command: list[str],
    port: int,
    env: dict,
    log_path: Path,
    cwd: Path = REPO,
    as_background_job: bool = False,
) -> Iterator[list[float]]:
    """A Dagster webserver + daemon started in its own process group; waits (minutes) until it
    answers on `port`, and stops the whole group (by its pid) however the test ends. Yields a list
    that holds, once stopped, the seconds SIGTERM took. `as_background_job`: started with SIGINT
    ignored, as a shell's `cmd &` starts it."""
    log = open(log_path, "wb")  # noqa: SIM115 - open for the server's lifetime, closed below
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if as_background_job else None,
    )
    stopped: list[float] = []
    try:

        def server_up() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    return True
            except OSError:
                return False

        _wait(server_up, 600, "the webserver", log_path)
        yield stopped
    finally:
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stopped.append(time.monotonic() - started)
        log.close()


@pytest.mark.server
def test_dagster_webserver_and_daemon_run_the_ingest_jobs(tmp_path):
    from dagster_graphql import DagsterGraphQLClient

    home = tmp_path / "var"
    write_sample_sources(home / "sources")
    # no scraped batch: its sensor's run would share the 2 cores with the runs this test waits for
    shutil.rmtree(home / "sources" / "scraped")
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {
        **os.environ,
        "FERLAB_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONUNBUFFERED": "1",
        INTERVAL_ENV: "5",  # the sensors' ticks, not their 30 s default, set the pace
    }
    dagster = str(Path(sys.executable).parent / "dagster")
    command = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with _dagster_server(command, port, env, tmp_path / "dagster.log"):
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution("fer2013_ingest_job")

        def finished(run: str) -> str | None:
            status = client.get_run_status(run).value
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        assert _wait(lambda: finished(run_id), 900, "the fer2013 run", tmp_path / "dagster.log") == "SUCCESS"

        # The daemon ticks the DISFA sensor: both subjects become partitions and get a run each.
        def disfa_runs_done():
            runs = _runs(port, "disfa_ingest_job")
            done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return runs if len(runs) == 2 and len(done) == 2 else None

        runs = _wait(disfa_runs_done, 900, "the sensor's DISFA runs", tmp_path / "dagster.log")
        assert {r["status"] for r in runs} == {"SUCCESS"}
        partitions = {t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"}
        assert partitions == {"SN001", "SN002"}
    wh = Warehouse(home)
    counts = {
        r["source"]: r["n"] for r in wh.sql("SELECT source, count(*) AS n FROM images GROUP BY 1").to_pylist()
    }
    assert counts["fer2013"] == 200 and counts["disfa"] == 120


REPOSITORIES = """query { repositoriesOrError { ... on RepositoryConnection { nodes {
  sensors { name sensorState { status ticks(limit: 50) { status } } } } } } }"""
ALL_RUNS = """query { runsOrError { ... on Runs { results { runId jobName status } } } }"""


def _sensor_state(port: int, name: str) -> dict:
    nodes = _graphql(port, REPOSITORIES)["repositoriesOrError"]["nodes"]
    (state,) = [s["sensorState"] for repo in nodes for s in repo["sensors"] if s["name"] == name]
    return state


@pytest.mark.server
def test_demo_then_dev_lists_the_demo_runs_and_launches_no_training(tmp_path, demo_root):
    """`make demo` then `make dev` on the same data root: the UI lists every run of the demo, and
    the daemon, ticking the automation sensor, launches nothing (the demo's version is trained).
    On a copy of the session's demo data root: `dev` writes the sensor's ticks under it."""
    home = demo_root.copy(tmp_path / "var")
    env = {**os.environ, "FERLAB_HOME": str(home), "PYTHONUNBUFFERED": "1", INTERVAL_ENV: "5"}
    env.pop("DAGSTER_HOME", None)  # as `make` sets it: <data root>/dagster, prepared by ferlab
    ferlab = [sys.executable, "-m", "ferlab", "--home", str(home)]
    demo_jobs = sorted(
        line.split()[1].rstrip(":")
        for line in demo_root.stdout.splitlines()
        if line.startswith(("ok ", "FAILED "))
    )
    assert "training_job" in demo_jobs, demo_root.stdout

    port = _free_port()
    log_path = tmp_path / "dev.log"
    # From a folder outside the repository, as a user types it anywhere (issue 24).
    # As a background job (SIGINT ignored): `ferlab dev` must still stop on SIGTERM.
    reports_port = _free_port()
    command = [*ferlab, "dev", "--port", str(port), "--reports-port", str(reports_port)]
    with _dagster_server(command, port, env, log_path, cwd=tmp_path, as_background_job=True) as stopped:
        # the reports, one click from the UI: served beside it, by their path under the data root
        report = next(home.glob("reports/*/*/report.html"))
        url = f"http://127.0.0.1:{reports_port}/{report.relative_to(home).as_posix()}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and answer.read() == report.read_bytes()
        runs = _graphql(port, ALL_RUNS)["runsOrError"]["results"]
        assert sorted(r["jobName"] for r in runs) == demo_jobs
        assert {r["status"] for r in runs} == {"SUCCESS"}

        def ticks_done() -> int:
            state = _sensor_state(port, "automation_condition_sensor")
            assert state["status"] == "RUNNING", state
            done = [t for t in state["ticks"] if t["status"] in ("SUCCESS", "SKIPPED", "FAILURE")]
            assert not [t for t in done if t["status"] == "FAILURE"], (state, log_path.read_text()[-3000:])
            return len(done) >= 3

        _wait(ticks_done, 900, "three ticks of the automation sensor", log_path)
        after = _graphql(port, ALL_RUNS)["runsOrError"]["results"]
        assert sorted(r["runId"] for r in after) == sorted(r["runId"] for r in runs), after
    assert stopped[0] < 30, f"SIGTERM took {stopped[0]:.0f} s: `ferlab dev` ignored it"


def test_sensors_add_new_partitions_once(tmp_path, monkeypatch):
    from dagster import DagsterInstance, SkipReason, build_sensor_context

    from assets.resources import SourcesResource
    from dagster_project.definitions import defs

    write_sample_sources(tmp_path / "sources")
    monkeypatch.setenv("FERLAB_HOME", str(tmp_path))
    instance = DagsterInstance.ephemeral()
    for name, partitions, expected in (
        ("disfa_subject_sensor", "disfa_subjects", ["SN001", "SN002"]),
        ("scraped_batch_sensor", "scraped_batches", ["batch-001"]),
    ):
        sensor = defs.resolve_sensor_def(name)
        result = sensor(build_sensor_context(instance=instance, resources={"sources": SourcesResource()}))
        assert [r.partition_key for r in result.run_requests] == expected
        instance.add_dynamic_partitions(partitions, result.dynamic_partitions_requests[0].partition_keys)
        again = sensor(build_sensor_context(instance=instance, resources={"sources": SourcesResource()}))
        assert isinstance(again, SkipReason) or not again.run_requests


def test_sensor_interval_comes_from_the_environment(monkeypatch):
    from dagster_project.sensors import sensor_interval
    from warehouse.errors import ConfigError

    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert sensor_interval(30) == 30
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert sensor_interval(30) == 5
    for bad in ("0", "-3", "fast", "2.5"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=INTERVAL_ENV):
            sensor_interval(30)
