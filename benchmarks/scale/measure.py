"""Measuring one process: wall (perf_counter around it), CPU (user + sys) and peak RSS from the
rusage `os.wait4` returns for that child alone (Linux counts the child and the descendants it
waited for; ru_maxrss is the largest of them), so each stage's peak is its own, not the
running maximum RUSAGE_CHILDREN would give. And the data root after a stage: disk used,
Parquet parts and rows per table (from the parts' footers: stored rows, every version)."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.scale.generators import du_bytes

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Measured:
    cmd: list[str]
    rc: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_mb: float
    log: str
    tail: str = ""  # the log's last lines when the command failed

    def as_dict(self) -> dict:
        return asdict(self)


def child_env(work: Path) -> dict[str, str]:
    """The environment of every measured command: offline Ultralytics with its settings in the
    work folder, the repository importable (for `python -m benchmarks.scale.*`)."""
    env = dict(os.environ)
    env.update(
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="0",
        YOLO_CONFIG_DIR=str(work / "ultralytics"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    (work / "ultralytics").mkdir(parents=True, exist_ok=True)
    return env


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` (stdout and stderr to `log`) and measure it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    tail = ""
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    return Measured(
        cmd=[str(c) for c in cmd],
        rc=rc,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        log=str(log),
        tail=tail,
    )


def ferlab_cmd(home: Path, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ferlab", "--home", str(home), *(str(a) for a in args)]


@dataclass
class RootState:
    disk_mb: float
    parts: dict[str, int] = field(default_factory=dict)  # live parts: what a reader reads
    parts_on_disk: dict[str, int] = field(default_factory=dict)  # + merged-away parts in their grace
    rows: dict[str, int] = field(default_factory=dict)  # rows in the live parts (every label version)


try:  # a merged part lists the parts it replaces in its footer (warehouse.store's compaction)
    from warehouse.store import REPLACES_KEY
except ImportError:  # a warehouse without merges
    REPLACES_KEY = b"ferlab.replaces"
MERGED_PREFIX = "part-m-"


def root_state(home: Path) -> RootState:
    """Disk used by the data root; per table its parts (*.parquet: those a reader reads, i.e.
    not replaced by a merged part, and all on disk) and the rows the live ones hold (footers)."""
    import json

    import pyarrow.parquet as pq

    state = RootState(disk_mb=du_bytes(home) / 1e6 if home.exists() else 0.0)
    tables = home / "tables"
    if not tables.is_dir():
        return state
    for folder in sorted(p for p in tables.iterdir() if p.is_dir()):
        footers = {}
        for f in sorted(folder.glob("*.parquet")):
            try:
                footers[f.name] = pq.read_metadata(f)
            except Exception:  # written or merged away while we look, or damaged: not ours to judge
                continue
        replaced: set[str] = set()
        for name, meta in footers.items():
            if name.startswith(MERGED_PREFIX):
                with contextlib.suppress(ValueError):
                    replaced.update(json.loads((meta.metadata or {}).get(REPLACES_KEY, b"[]")))
        live = {n: m for n, m in footers.items() if n not in replaced}
        state.parts[folder.name] = len(live)
        state.parts_on_disk[folder.name] = len(footers)
        state.rows[folder.name] = sum(m.num_rows for m in live.values())
    return state


def machine() -> dict:
    import platform

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "maxrss_unit": "KiB" if sys.platform.startswith("linux") else "bytes",
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    }
