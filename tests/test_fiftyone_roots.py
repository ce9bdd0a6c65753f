"""Each data root keeps its own FiftyOne database (issue 21): two roots open at once never share a
database service, a sync or pull refuses a dataset or database folder of another root, a database
held by another process is named in one line, and FiftyOne's service chatter stays off stderr.

The subprocess tests run `ferlab` as a user does: no FIFTYONE_DATABASE_DIR (each root's database is
<root>/fiftyone) and no inherited database port. Every process they start, they stop by its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

from ferlab.cli import main
from labeling.fiftyone.corrections import pull_corrections
from labeling.fiftyone.sync import SyncReport, sync_fiftyone
from warehouse.errors import ConfigError
from warehouse.schemas import TABLES
from warehouse.store import Warehouse

pytestmark = pytest.mark.server  # FiftyOne's database (mongod), and the App

REPO = Path(__file__).resolve().parents[1]
FERLAB = [sys.executable, "-m", "ferlab"]


def _root(home: Path, tag: str, n: int) -> Warehouse:
    """A data root of `n` images (rows only: the sync opens no media file)."""
    wh = Warehouse(home)
    schema = TABLES["images"].schema
    rows = [
        dict(
            image_id=f"{tag}-{i:03d}",
            source="fer2013",
            source_uri=f"/in/{tag}/{i}",
            split="train",
            width=48,
            height=48,
            media_path=f"media/{tag}-{i}.png",
        )
        for i in range(n)
    ]
    wh.append("images", pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema))
    return wh


def _env() -> dict[str, str]:
    """As a user's shell: FiftyOne's database under each data root, no port handed down."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("FIFTYONE_DATABASE_DIR", "FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_URI"):
        env.pop(var, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongods(dbdir: Path) -> list:
    """The mongod processes serving the folder `dbdir`."""
    import psutil

    want = os.path.realpath(dbdir)
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        dbpath = cmd[cmd.index("--dbpath") + 1] if "--dbpath" in cmd[:-1] else None
        if p.info["name"] == "mongod" and dbpath and os.path.realpath(dbpath) == want:
            found.append(p)
    return found


def _mongod_port(dbdir: Path, timeout: float = 60) -> int:
    """The port of the mongod serving `dbdir` (waits for it)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in _mongods(dbdir):
            try:
                ports = [c.laddr[1] for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
            if ports:
                return ports[0]
        time.sleep(0.25)
    raise AssertionError(f"no mongod serves {dbdir}")


def _read(dbdir: Path, name: str = "ferlab") -> tuple[dict, dict[str, list[str]]]:
    """The dataset `name` in the database folder `dbdir`, read from its own mongod (not through
    FiftyOne): its info and image_id -> sample tags."""
    import pymongo

    client = pymongo.MongoClient("127.0.0.1", _mongod_port(dbdir), serverSelectionTimeoutMS=20_000)
    try:
        db = client["fiftyone"]
        doc = db.datasets.find_one({"name": name})
        assert doc is not None, f"no dataset {name!r} in {dbdir}"
        samples = db[doc["sample_collection_name"]].find({}, {"image_id": 1, "tags": 1})
        return doc.get("info") or {}, {s["image_id"]: sorted(s.get("tags") or []) for s in samples}
    finally:
        client.close()


def _tag(dbdir: Path, image_ids: list[str], tag: str, name: str = "ferlab") -> None:
    """What a curator does in the App: tag samples (written to the database directly)."""
    import pymongo

    client = pymongo.MongoClient("127.0.0.1", _mongod_port(dbdir), serverSelectionTimeoutMS=20_000)
    try:
        db = client["fiftyone"]
        coll = db[db.datasets.find_one({"name": name})["sample_collection_name"]]
        assert coll.update_many({"image_id": {"$in": image_ids}}, {"$addToSet": {"tags": tag}}).modified_count
    finally:
        client.close()


@contextmanager
def _review(home: Path, port: int, log: Path) -> Iterator[subprocess.Popen]:
    """`ferlab --home HOME review --port PORT` until the App serves; stopped by Ctrl-C after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*FERLAB, "--home", str(home), "review", "--port", str(port)],
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while b"samples in" not in log.read_bytes() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        assert b"samples in" in log.read_bytes(), log.read_text(errors="replace")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ferlab(
    *args: str, env: dict | None = None, timeout: float = 180
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [*FERLAB, *args], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - started


def _wait_gone(dbdir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _mongods(dbdir) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not _mongods(dbdir), f"a mongod still serves {dbdir} after its clients left"


# ---- 1. two data roots at once ---------------------------------------------------------------------
@pytest.mark.slow
def test_two_data_roots_open_at_once_keep_their_own_datasets(tmp_path):
    """The issue's case: root A's App is running (its database service up) when `ferlab --home B
    review` starts. B gets its own database under B; A's dataset keeps its samples and its
    curators' tags; A syncs again while B's App runs; B's review cannot take A's App port."""
    a = _root(tmp_path / "a", "a", 5)
    b = _root(tmp_path / "b", "b", 3)
    a_ids = {f"a-{i:03d}" for i in range(5)}
    b_ids = {f"b-{i:03d}" for i in range(3)}
    port_a, port_b = _free_port(), _free_port()
    with _review(a.home, port_a, tmp_path / "a.log"):
        _tag(a.home / "fiftyone", ["a-000", "a-001"], "curated")
        with _review(b.home, port_b, tmp_path / "b.log"):
            info, samples = _read(a.home / "fiftyone")
            assert set(samples) == a_ids, (
                f"root A's dataset now holds {sorted(samples)}\n" + (tmp_path / "b.log").read_text()
            )
            assert samples["a-000"] == samples["a-001"] == ["curated"]
            assert info["ferlab_sync"]["warehouse"] == str(a.home)
            info, samples = _read(b.home / "fiftyone")
            assert set(samples) == b_ids and info["ferlab_sync"]["warehouse"] == str(b.home)

            # A syncs again while both are open: it reaches A's database, not B's
            code = (
                "from labeling.fiftyone.sync import sync_fiftyone; from warehouse import Warehouse; "
                f"print(sync_fiftyone(Warehouse({str(a.home)!r})))"
            )
            env = {**_env(), "FIFTYONE_DATABASE_DIR": str(a.home / "fiftyone")}
            again = subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
            )
            assert again.returncode == 0, again.stderr
            assert str(SyncReport(0, 0, 0, 5)) in again.stdout, again.stdout + again.stderr
            assert _read(a.home / "fiftyone")[1]["a-000"] == ["curated"]
            assert set(_read(b.home / "fiftyone")[1]) == b_ids

            # B's review on the port of A's App: refused at once, in one line
            done, _ = _ferlab(
                "--home", str(b.home), "review", "--no-sync", "--port", str(port_a), timeout=120
            )
            err = done.stderr.strip()
            assert done.returncode == 2 and len(err.splitlines()) == 1, done.stdout + done.stderr
            assert str(port_a) in err and "another" in err and "--port" in err, err
    # each database service stops with its last client
    _wait_gone(a.home / "fiftyone")
    _wait_gone(b.home / "fiftyone")


# ---- 1. a dataset or a database folder of another root is refused -----------------------------------
def test_a_dataset_of_another_root_is_refused(tmp_path, dataset_name, capsys):
    """Two roots, one database (FIFTYONE_DATABASE_DIR shared, as in this test session): B's sync
    and pull refuse A's dataset, in one line naming both roots; A's dataset and tags stay."""
    import fiftyone as fo

    a = _root(tmp_path / "a", "a", 4)
    b = _root(tmp_path / "b", "b", 2)
    assert sync_fiftyone(a, dataset_name) == SyncReport(4, 0, 0, 4)
    ds = fo.load_dataset(dataset_name)
    ds.match(fo.ViewField("image_id") == "a-000").tag_samples("curated")

    with pytest.raises(ConfigError) as refused:
        sync_fiftyone(b, dataset_name)
    message = str(refused.value)
    assert "\n" not in message and str(a.home) in message and str(b.home) in message, message
    assert "--dataset" in message, message
    with pytest.raises(ConfigError, match=str(a.home)):
        pull_corrections(b, dataset_name)
    assert main(["--home", str(b.home), "review", "pull", "--dataset", dataset_name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and str(a.home) in err, err

    ds.reload()
    assert sorted(ds.values("image_id")) == [f"a-{i:03d}" for i in range(4)]
    assert ds.count_sample_tags() == {"curated": 1}
    assert sync_fiftyone(a, dataset_name) == SyncReport(0, 0, 0, 4)  # its own root still syncs


def test_a_moved_data_root_takes_its_dataset_along(tmp_path, dataset_name):
    """A dataset whose root is gone (moved, renamed) belongs to no other root: the root at its new
    place adopts it, samples and tags kept."""
    import fiftyone as fo

    old = _root(tmp_path / "old", "a", 3)
    sync_fiftyone(old, dataset_name)
    fo.load_dataset(dataset_name).match(fo.ViewField("image_id") == "a-001").tag_samples("curated")
    (tmp_path / "old").rename(tmp_path / "new")
    moved = Warehouse(tmp_path / "new")
    assert sync_fiftyone(moved, dataset_name) == SyncReport(0, 3, 0, 3)  # file paths changed
    ds = fo.load_dataset(dataset_name)
    assert ds.info["ferlab_sync"]["warehouse"] == str(moved.home)
    assert ds.count_sample_tags() == {"curated": 1}


def test_a_database_folder_of_another_root_is_refused(tmp_path):
    """FIFTYONE_DATABASE_DIR left pointing at another data root's database (an exported variable):
    refused in one line before any database starts there."""
    a = _root(tmp_path / "a", "a", 1)
    b = _root(tmp_path / "b", "b", 1)
    env = {**_env(), "FIFTYONE_DATABASE_DIR": str(a.home / "fiftyone")}
    done, _ = _ferlab("--home", str(b.home), "review", "pull", env=env)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, done.stdout + done.stderr
    assert str(a.home / "fiftyone") in err and str(b.home) in err and "FIFTYONE_DATABASE_DIR" in err, err
    assert not _mongods(a.home / "fiftyone")


# ---- 9b. a database held by another process ----------------------------------------------------------
def test_a_database_held_by_another_process_is_named(tmp_path):
    """A mongod that no FiftyOne service runs holds the root's database folder: `review pull` says
    which process, and what to do, in one line, at once (not FiftyOne's minute-long
    ServiceListenTimeout reported as a bug)."""
    from fiftyone.core.service import DatabaseService

    wh = _root(tmp_path / "home", "a", 1)
    dbdir = wh.home / "fiftyone"
    (dbdir / "log").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            DatabaseService.find_mongod(),
            "--dbpath",
            str(dbdir),
            "--logpath",
            str(dbdir / "log" / "held.log"),
            "--port",
            str(_free_port()),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _mongod_port(dbdir)
        done, seconds = _ferlab("--home", str(wh.home), "review", "pull")
        err = done.stderr.strip()
        assert done.returncode != 0 and len(err.splitlines()) == 1, done.stdout + done.stderr
        assert "a bug" not in err and str(holder.pid) in err and "kill" in err, err
        assert seconds < 40, seconds
    finally:
        holder.terminate()
        holder.wait(timeout=60)


# ---- 10d. FiftyOne's service chatter ------------------------------------------------------------------
def test_an_unresponsive_service_stays_off_stderr(tmp_path):
    """A process that looks like FiftyOne's database service of this root but does not answer:
    FiftyOne's "Process N ... did not respond" stays off a normal run's stderr (--debug shows it)."""
    wh = _root(tmp_path / "home", "a", 1)
    dbdir = wh.home / "fiftyone"
    script = "import time; time.sleep(300)"
    dummy = subprocess.Popen(
        [sys.executable, "-c", script, "--51-service", "db", "--multi", "mongod", "--dbpath", str(dbdir)],
        start_new_session=True,
    )
    try:
        done, _ = _ferlab("--home", str(wh.home), "review", "pull", "--dataset", "no-such-dataset")
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith("error: no FiftyOne dataset"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "did not respond" not in done.stdout + done.stderr
        done, _ = _ferlab("--home", str(wh.home), "--debug", "review", "pull", "--dataset", "no-such-dataset")
        assert done.returncode == 2 and str(dummy.pid) in done.stderr, done.stderr
    finally:
        dummy.kill()
        dummy.wait()
    _wait_gone(dbdir)
