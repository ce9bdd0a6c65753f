"""Several machines on existing engines (issue 25), each started by the test on 127.0.0.1 and
stopped by it: Dagster's runs and events in a throwaway PostgreSQL cluster (`initdb` / `pg_ctl`),
and the ingest + auto-labeling steps of several partitions on a dask scheduler with two workers,
one of them killed mid-step."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_project.executors import SCHEDULER_ENV
from ferlab.demo import QUIET, prepare_dagster_home
from ferlab.runstorage import POSTGRES_ENV
from tests.test_dagster import _free_port, _wait
from warehouse import Warehouse
from warehouse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _poll(predicate, timeout: float, what: str, log: Path, every: float = 0.2):
    """`_wait` at a finer step, for a moment that lasts a few seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{_log_tail(log)}")


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (its socket in its own folder),
    with a password; yields the URL of its database `dagster`. Stopped by `pg_ctl stop -m fast`.
    PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` (else `nobody`) user."""
    import psycopg2

    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.fail(
            "initdb / pg_ctl not on PATH: install the PostgreSQL server binaries (Debian: postgresql)"
        )
    base = Path(tempfile.mkdtemp(prefix="ferlab-pg-"))  # short: a unix socket path has ~100 bytes
    data, log, pwfile = base / "data", base / "postgres.log", base / "pwfile"
    password = secrets.token_hex(12)
    pwfile.write_text(password)
    as_user: dict = {}
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = pwd.getpwnam("nobody")
        for path in (base, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    port = _free_port()
    started = False
    try:
        subprocess.run(
            ["initdb", "-D", str(data), "-U", "ferlab", f"--pwfile={pwfile}", "-A", "scram-sha-256"]
            + ["-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **as_user,
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = subprocess.run(
            ["pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "120", "-o", options, "start"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_user,
        )
        started = True
        if start.returncode != 0:
            pytest.fail(f"PostgreSQL did not start on port {port}\n{_log_tail(log)}")
        con = psycopg2.connect(
            host="127.0.0.1", port=port, user="ferlab", password=password, dbname="postgres"
        )
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        con.close()
        yield f"postgresql+psycopg2://ferlab:{password}@127.0.0.1:{port}/dagster"
    finally:
        if started:
            subprocess.run(
                ["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **as_user,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL cluster's database, stopped after the test."""
    with _postgres() as url:
        yield url


@pytest.mark.server
def test_dagster_runs_and_events_are_stored_in_postgres(tmp_path, monkeypatch, postgres_url):
    """`$FERLAB_DAGSTER_POSTGRES_URL` set: ferlab's dagster.yaml keeps runs, events and schedules
    in that database (the file names the variable; the password is in no file and no event), a
    real job's run and events land there, and another instance reads them back."""
    import psycopg2
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

    from dagster_project.definitions import defs
    from ferlab.samples.fer2013 import write_fer2013_sample

    home = tmp_path / "var"
    write_fer2013_sample(home / "sources" / "fer2013.csv", rows=40, seed=0)
    monkeypatch.setenv("FERLAB_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    url = postgres_url
    password = url.split(":")[2].split("@")[0]
    plain = url.replace("+psycopg2", "")
    monkeypatch.setenv(POSTGRES_ENV, plain)  # without the driver: refused, saying which to name
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg2://") as refused:
        prepare_dagster_home(home)
    assert password not in str(refused.value)
    monkeypatch.setenv(POSTGRES_ENV, url)
    dagster_home = prepare_dagster_home(home)
    yaml = (dagster_home / "dagster.yaml").read_text()
    assert f"env: {POSTGRES_ENV}" in yaml and password not in yaml
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        result = defs.resolve_job_def("fer2013_ingest_job").execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False
        )
        assert result.success
    con = psycopg2.connect(url.replace("+psycopg2", ""))  # the database itself, not through Dagster
    try:
        with con.cursor() as cur:
            cur.execute("SELECT run_id, pipeline_name, status FROM runs")
            assert cur.fetchall() == [(result.run_id, "fer2013_ingest_job", "SUCCESS")]
            cur.execute(
                "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1",
                (result.run_id,),
            )
            events = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM event_logs WHERE event LIKE %s", (f"%{password}%",))
            (leaks,) = cur.fetchone()
    finally:
        con.close()
    # the FER-2013 images, their detections and crops; one run start and success
    success = DagsterEventType.RUN_SUCCESS.value
    assert events["ASSET_MATERIALIZATION"] == 3 and events[success] == 1, events
    assert leaks == 0
    assert not (dagster_home / "history").exists()  # no SQLite run storage beside it
    with DagsterInstance.get() as again:  # as another process (a daemon, a worker) opens it
        assert again.get_run_by_id(result.run_id).status == DagsterRunStatus.SUCCESS
        assert len(again.get_records_for_run(result.run_id, limit=1000).records) == sum(events.values())
    assert Warehouse(home).count("images") == 40


def test_a_postgres_url_that_does_not_answer_is_one_error_line(tmp_path, monkeypatch):
    """Where, why and what to do, with the password as ***; the SQLite default needs no server."""
    from ferlab.demo import DAGSTER_YAML

    secret = "s3cret-" + secrets.token_hex(4)
    port = _free_port()  # nothing listens there
    env = {
        **os.environ,
        POSTGRES_ENV: f"postgresql+psycopg2://ferlab:{secret}@127.0.0.1:{port}/dagster",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    command = [sys.executable, "-m", "ferlab", "--home", str(tmp_path / "var"), "export", "v-0"]
    out = subprocess.run([*command, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: Dagster's run storage"), lines
    assert f"127.0.0.1:{port}" in lines[0] and "***" in lines[0] and f"unset {POSTGRES_ENV}" in lines[0]
    assert secret not in out.stderr + out.stdout
    assert not (tmp_path / "dagster" / "dagster.yaml").exists()  # nothing written for a dead server

    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.delenv("DAGSTER_HOME")
    dagster_home = prepare_dagster_home(tmp_path / "sqlite")
    assert dagster_home == (tmp_path / "sqlite" / "dagster").resolve()
    assert (dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML  # the embedded default: SQLite


# --- the dask executor -------------------------------------------------------------------------

SUBJECTS = ["SN001", "SN002", "SN003"]  # a run each, all at once: both workers take steps
FRAMES = 24
KILLED = "SN004"  # then a run whose auto-labeling loses its worker mid-step
KILLED_FRAMES = 320
COMMIT_EVERY = 8  # the auto-labeling commits a chunk of 8 frames at a time


@contextlib.contextmanager
def _process(command: list[str], env: dict, log_path: Path) -> Iterator[subprocess.Popen]:
    """A server in its own process group, stopped by its pid (SIGTERM, then SIGKILL) at the end."""
    log = open(log_path, "wb")  # noqa: SIM115 - open for the process's lifetime, closed below
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


class _Runs:
    """Runs of disfa_ingest_job, one process each (`dagster job execute`, as a daemon starts a run
    worker per run), against the instance of DAGSTER_HOME; the executor sends their steps to dask.
    (Runs in threads of one process deadlock in Dagster's per-run logging.dictConfig.)"""

    def __init__(self, run_config: dict, env: dict, folder: Path):
        import yaml

        self.config = folder / "run_config.yaml"
        self.config.write_text(yaml.safe_dump(run_config))
        self.env, self.folder = env, folder
        self.procs: dict[str, subprocess.Popen] = {}

    def launch(self, partition: str) -> None:
        command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "dagster_project.definitions"]
        command += ["-a", "defs", "-j", "disfa_ingest_job", "-c", str(self.config)]
        command += ["--tags", json.dumps({"dagster/partition": partition})]
        log = self.log(partition).open("wb")
        self.procs[partition] = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own descriptor

    def log(self, partition: str) -> Path:
        return self.folder / f"run-{partition}.log"

    def join(self, timeout: float, logs: list[Path]) -> dict[str, tuple[bool, str]]:
        """{partition: (succeeded, run id)} from the instance, once every run process has ended."""
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        deadline = time.monotonic() + timeout
        try:
            for proc in self.procs.values():
                proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            tails = "\n".join(f"--- {p.name}\n{_log_tail(p)}" for p in [*logs, *map(self.log, self.procs)])
            pytest.fail(f"runs not finished after {timeout:.0f} s\n{tails}")
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        results = {}
        with DagsterInstance.get() as instance:
            for partition in self.procs:
                (run,) = instance.get_runs(RunsFilter(tags={"dagster/partition": partition}), limit=1)
                results[partition] = (run.status == DagsterRunStatus.SUCCESS, run.run_id)
        self.procs.clear()
        return results


def _placements(instance, partitions: list[str]) -> dict[str, dict[str, str]]:
    """Per partition and asset of the job, the dask worker its latest materialization ran on."""
    from dagster import AssetKey, AssetRecordsFilter

    placed: dict[str, dict[str, str]] = {}
    for asset in ("disfa_frames", "disfa_detections", "disfa_crops"):
        for partition in partitions:
            latest = instance.fetch_materializations(
                AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition]), limit=1
            ).records
            assert latest, (asset, partition)
            ran_on = latest[0].asset_materialization.metadata["ran_on"].value
            placed.setdefault(partition, {})[asset] = ran_on.get("dask_worker", f"not dask: {ran_on}")
    return placed


def _exact_rows(wh: Warehouse, frames: dict[str, int]) -> None:
    """Each subject's frames once, each auto-labeled once, and exactly the boxes and crops its
    `autolabel_done` rows say it got: nothing lost, nothing doubled."""
    per_subject = {
        r["subject"]: r
        for r in wh.sql(
            "SELECT i.subject, count(*) AS images, count(DISTINCT i.image_id) AS distinct_images, "
            "(SELECT count(*) FROM autolabel_done d JOIN images j USING (image_id) WHERE j.subject = i.subject) AS done, "
            "(SELECT count(DISTINCT d.image_id) FROM autolabel_done d JOIN images j USING (image_id) "
            "WHERE j.subject = i.subject) AS distinct_done, "
            "(SELECT coalesce(sum(d.detections), 0) FROM autolabel_done d JOIN images j USING (image_id) "
            "WHERE j.subject = i.subject) AS boxes_recorded, "
            "(SELECT count(*) FROM detections d JOIN images j USING (image_id) WHERE j.subject = i.subject) AS boxes, "
            "(SELECT count(*) FROM au_labels a JOIN images j USING (image_id) WHERE j.subject = i.subject) AS au_labels "
            "FROM images i WHERE i.source = 'disfa' GROUP BY 1"
        ).to_pylist()
    }
    assert sorted(per_subject) == sorted(frames), per_subject
    for subject, n in frames.items():
        row = per_subject[subject]
        assert row["images"] == row["distinct_images"] == n, row
        assert row["done"] == row["distinct_done"] == n, row
        assert row["boxes"] == row["boxes_recorded"] >= n, row  # a face on every rendered frame
        assert row["au_labels"] == 12 * n, row
    dup = wh.sql(
        "SELECT (SELECT count(*) - count(DISTINCT detection_id) FROM detections) AS detections, "
        "(SELECT count(*) - count(DISTINCT crop_id) FROM crops) AS crops, "
        "(SELECT count(*) FROM crops c LEFT JOIN detections d USING (detection_id) "
        "WHERE d.detection_id IS NULL) AS orphan_crops"
    ).to_pylist()[0]
    assert dup == {"detections": 0, "crops": 0, "orphan_crops": 0}, dup


@pytest.mark.server
def test_dask_workers_share_the_partitions_and_a_killed_worker_loses_nothing(
    tmp_path, monkeypatch, postgres_url
):
    """Dagster's instance in PostgreSQL (as on several machines: the run processes and the dask
    workers all write their events there), the data root on this machine's disk."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
    from distributed import Client

    from ferlab.samples.disfa import write_disfa_sample

    home = tmp_path / "var"
    write_disfa_sample(home / "sources" / "disfa", subjects=tuple(SUBJECTS), frames=FRAMES, seed=1)
    write_disfa_sample(home / "sources" / "disfa", subjects=(KILLED,), frames=KILLED_FRAMES, seed=2)
    monkeypatch.setenv("FERLAB_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv(POSTGRES_ENV, postgres_url)  # the scheduler, workers and runs inherit it
    prepare_dagster_home(home)
    address = f"tcp://127.0.0.1:{_free_port()}"
    monkeypatch.setenv(SCHEDULER_ENV, address)  # read by the executor when a run starts
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    dask = [sys.executable, "-m", "dask"]
    logs = [tmp_path / "scheduler.log", tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    run_config = {
        **QUIET,
        "resources": {
            "detector": {"config": {"spec": "yunet", "device": "cpu", "commit_every": COMMIT_EVERY}}
        },
    }
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("disfa_subjects", [*SUBJECTS, KILLED])

    scheduler_cmd = [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
    with _process([*scheduler_cmd, "--no-dashboard"], env, logs[0]) as scheduler:
        workers = {}
        with contextlib.ExitStack() as stack:
            for name, log in (("worker-a", logs[1]), ("worker-b", logs[2])):
                command = [*dask, "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "1"]
                command += [
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp_path / name),
                ]
                workers[name] = stack.enter_context(_process(command, env, log))

            def two_workers() -> bool:
                assert scheduler.poll() is None, _log_tail(logs[0])
                try:
                    with Client(address, timeout=5) as probe:
                        return len(probe.scheduler_info()["workers"]) == 2
                except OSError:
                    return False

            _wait(two_workers, 300, "the dask scheduler and its two workers", logs[0])
            client = stack.enter_context(Client(address, timeout=30))

            # 1. Three partitions at once: both workers run steps, every row lands once.
            started = time.monotonic()
            runs = _Runs(run_config, env, tmp_path)
            for subject in SUBJECTS:
                runs.launch(subject)
            results = runs.join(600, logs)
            assert all(ok for ok, _ in results.values()), (results, _log_tail(runs.log(SUBJECTS[0])))
            with DagsterInstance.get() as instance:
                placed = _placements(instance, SUBJECTS)
            print(f"\nthree partitions on two workers in {time.monotonic() - started:.1f} s: {placed}")
            used = {worker for steps in placed.values() for worker in steps.values()}
            assert used == {"worker-a", "worker-b"}, placed
            wh = Warehouse(home)
            _exact_rows(wh, dict.fromkeys(SUBJECTS, FRAMES))

            # 2. A partition whose auto-labeling loses its worker (SIGKILL to the worker's process
            # group, nanny included) after some chunks are stored: dask runs the step again on the
            # other worker, which skips the stored frames; the run completes, nothing lost or doubled.
            started = time.monotonic()
            runs.launch(KILLED)
            faces_key = "disfa_ingest_job.disfa_faces-"

            def labeling_midway() -> tuple[str, int] | None:
                busy = [
                    addr for addr, keys in client.processing().items() if any(faces_key in k for k in keys)
                ]
                if not busy:
                    return None
                done = wh.sql(
                    "SELECT count(*) AS n FROM autolabel_done d JOIN images i USING (image_id) "
                    "WHERE i.subject = ?",
                    [KILLED],
                ).to_pylist()[0]["n"]
                assert done < KILLED_FRAMES, "the auto-labeling finished before it could be killed"
                return (busy[0], done) if done >= COMMIT_EVERY else None

            busy, done = _poll(labeling_midway, 300, f"{KILLED}'s auto-labeling midway", logs[0])
            victim = client.scheduler_info()["workers"][busy]["name"]
            os.killpg(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait()
            survivor = ({"worker-a", "worker-b"} - {victim}).pop()
            ok, run_id = runs.join(600, logs)[KILLED]
            print(
                f"{KILLED}: {victim} killed with {done}/{KILLED_FRAMES} frames stored, run {'succeeded' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s"
            )
            assert ok, f"run {run_id} failed after {victim} was killed\n{_log_tail(runs.log(KILLED))}"
            with DagsterInstance.get() as instance:
                placed = _placements(instance, [KILLED])[KILLED]
                (detections,) = instance.fetch_materializations(
                    AssetRecordsFilter(AssetKey("disfa_detections"), asset_partitions=[KILLED]), limit=1
                ).records
                skipped = detections.asset_materialization.metadata["images_skipped"].value
                starts = [
                    r.event_log_entry.step_key
                    for r in instance.get_records_for_run(run_id, of_type=None, limit=5000).records
                    if r.event_log_entry.dagster_event is not None
                    and r.event_log_entry.dagster_event.event_type_value == "STEP_START"
                ]
            print(
                f"{KILLED}: {placed}; the second attempt skipped {skipped} frames; step starts {sorted(starts)}"
            )
            assert skipped >= done, (skipped, done)  # what the killed attempt had stored was not redone
            assert placed["disfa_detections"] == placed["disfa_crops"] == survivor, placed
            # the killed attempt and the one that finished; the steps finished before the kill ran once
            assert starts.count("disfa_faces") == 2 and starts.count("disfa_frames") == 1, starts
            _exact_rows(wh, {**dict.fromkeys(SUBJECTS, FRAMES), KILLED: KILLED_FRAMES})


def test_the_executor_picks_dask_when_a_scheduler_is_given_and_says_when_it_does_not_answer(
    tmp_path, monkeypatch
):
    """No scheduler: Dagster's multiprocess executor. `$FERLAB_DASK_SCHEDULER`: the dask one, and a
    scheduler that does not answer fails the run with one line saying what to do."""
    from dagster import DagsterInstance, InitExecutorContext, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.executor.multiprocess import MultiprocessExecutor

    from dagster_project.executors import DaskStepsError, RunScopedDaskExecutor, ferlab_executor

    repo = ReconstructableRepository.for_module("dagster_project.definitions", "defs", str(REPO))
    job = repo.get_reconstructable_job("fer2013_ingest_job")

    def executor():
        config = {"connect_timeout_s": 2, "max_concurrent": None}
        context = InitExecutorContext(job, ferlab_executor, config, DagsterInstance.ephemeral())
        return ferlab_executor.executor_creation_fn(context)

    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert isinstance(executor(), MultiprocessExecutor)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv(SCHEDULER_ENV, address)
    assert isinstance(executor(), RunScopedDaskExecutor) and executor().address == address

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    prepare_dagster_home(tmp_path / "var")
    config = {**QUIET, "execution": {"config": {"connect_timeout_s": 2}}}
    with DagsterInstance.get() as instance, execute_job(job, instance, run_config=config) as result:
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"]
    message = failure.event_specific_data.error.message
    assert DaskStepsError.__name__ in message and f"{address} (${SCHEDULER_ENV}) does not answer" in message
    assert f"unset {SCHEDULER_ENV}" in message
