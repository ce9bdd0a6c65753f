"""`make bench-scale`: every stage of the platform at >= 3 sizes, each a process of the real CLI
on a fresh data root per size, with its wall and CPU time, peak memory, and the data root's
disk, parts and rows after it; the growth exponent of each stage fitted, projections to
1,000,000 faces and to the whole DISFA, a table, a plot and a JSON-lines file.

    .venv/bin/python -m benchmarks.scale [--sizes small|full|tiny] [--stages a,b,...] [--out DIR]
        [--scraped 1000,2000,4000] [--fer2013 2000,4000,8000] [--disfa 200,400,800]
        [--work DIR] [--jobs N] [--device auto] [--keep]

See benchmarks/scale/__init__.py for what each stage runs and measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.scale import generators as gen
from benchmarks.scale.measure import REPO, child_env, ferlab_cmd, machine, root_state, run_measured
from benchmarks.scale.probe import QUERIES

RESULTS = Path(__file__).resolve().parent / "results"
DISFA_VIDEO_FRAMES = (
    4845  # frames in one DISFA video: a level splits its frames into subjects of at most this
)

# Per preset, per level: FER-2013 rows, scraped images, DISFA frames; and the scraped batch size.
PRESETS: dict[str, dict] = {
    "tiny": {
        "fer2013": [30, 60, 90],
        "scraped": [24, 48, 72],
        "disfa": [8, 16, 24],
        "batch": 24,
        "res": (320, 240),
    },
    "small": {
        "fer2013": [2000, 4000, 8000],
        "scraped": [1000, 2000, 4000],
        "disfa": [200, 400, 800],
        "batch": 500,
        "res": (1024, 768),
    },
    "full": {
        "fer2013": [9000, 18000, 35887],
        "scraped": [10000, 30000, 100000],
        "disfa": [2400, 4845, 9690],
        "batch": 5000,
        "res": (1024, 768),
    },
}


@dataclass(frozen=True)
class Stage:
    name: str
    source: str  # whose count is the stage's size: fer2013, scraped, disfa, or all (images stored)
    unit: str
    table: str  # the table the stage writes (or reads), shown in the table
    group: str
    about: str


STAGES: list[Stage] = [
    Stage("ingest_fer2013", "fer2013", "rows", "images", "ingest", "ferlab ingest fer2013 CSV"),
    Stage(
        "naive_parse_fer2013",
        "fer2013",
        "rows",
        "-",
        "ingest",
        "baseline: pandas read_csv + one str.split per row (a whole process)",
    ),
    Stage(
        "ingest_scraped",
        "scraped",
        "images",
        "images",
        "ingest",
        "ferlab ingest images BATCH, one process per batch (sums; peak = the largest)",
    ),
    Stage("ingest_disfa", "disfa", "frames", "images", "ingest", "ferlab ingest disfa ROOT --subject ..."),
    Stage(
        "autolabel_fer2013",
        "fer2013",
        "rows",
        "crops",
        "autolabel",
        "ferlab autolabel --source fer2013 (full-image faces: crop only)",
    ),
    Stage(
        "autolabel_scraped",
        "scraped",
        "images",
        "crops",
        "autolabel",
        "ferlab autolabel --source scraped (default detector: the teachers)",
    ),
    Stage(
        "autolabel_disfa",
        "disfa",
        "frames",
        "crops",
        "autolabel",
        "ferlab autolabel --source disfa (default detector: the teachers)",
    ),
    Stage(
        "version", "all", "images", "dataset_manifest", "curate", "ferlab version (dataset version snapshot)"
    ),
    *[
        Stage(f"sql_cli:{q}", "all", "images", "-", "query", f"ferlab sql <{q} query> (a whole process)")
        for q in QUERIES
    ],
    *[
        Stage(
            f"sql_call:{q}",
            "all",
            "images",
            "-",
            "query",
            f"Warehouse.sql(<{q} query>) in-process, median of 3 (connect + views + query)",
        )
        for q in QUERIES
    ],
    Stage(
        "near_duplicates",
        "scraped",
        "images",
        "near_duplicates",
        "curate",
        "near_duplicates rows vs the pairs the generator planted (process: open + query + compare)",
    ),
    Stage(
        "review_queue",
        "all",
        "images",
        "review_queue",
        "curate",
        "ferlab review-queue emotion (needs a production model: else skipped)",
    ),
    Stage(
        "autolabel_disfa_student",
        "disfa",
        "frames",
        "crops",
        "autolabel",
        "ferlab autolabel --source disfa --spec <YOLO student .pt> (a student trained for 1 epoch: "
        "its speed is the architecture's)",
    ),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}
GROUPS = sorted({s.group for s in STAGES})


def selected_stages(spec: str | None) -> list[Stage]:
    """`a,b`: stage names, groups (ingest, autolabel, query, curate) or name prefixes (sql_cli)."""
    if not spec:
        return list(STAGES)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    out = [
        s for s in STAGES if any(s.name == w or s.group == w or s.name.startswith(w + ":") for w in wanted)
    ]
    unknown = [
        w
        for w in wanted
        if not any(s.name == w or s.group == w or s.name.startswith(w + ":") for s in STAGES)
    ]
    if unknown:
        raise SystemExit(
            f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(GROUPS)} or {', '.join(STAGE_BY_NAME)}"
        )
    return out


def _sizes(text: str | None, default: list[int]) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",")] if text else list(default)


def disfa_split(frames: int) -> tuple[int, int]:
    """(subjects, frames per subject) of a DISFA level: subjects of at most one DISFA video."""
    subjects = max(1, math.ceil(frames / DISFA_VIDEO_FRAMES))
    return subjects, math.ceil(frames / subjects)


class Bench:
    def __init__(self, args: argparse.Namespace):
        preset = PRESETS[args.sizes]
        self.args = args
        self.sizes = {
            "fer2013": _sizes(args.fer2013, preset["fer2013"]),
            "scraped": _sizes(args.scraped, preset["scraped"]),
            "disfa": _sizes(args.disfa, preset["disfa"]),
        }
        levels = {len(v) for v in self.sizes.values()}
        if len(levels) != 1:
            raise SystemExit(f"give every source the same number of sizes, not {self.sizes}")
        self.levels = levels.pop()
        self.batch = args.batch or preset["batch"]
        self.res = tuple(int(v) for v in args.disfa_res.split("x")) if args.disfa_res else preset["res"]
        self.stages = selected_stages(args.stages)
        self.out = Path(args.out) if args.out else RESULTS if args.sizes == "full" else RESULTS / args.sizes
        self.work = Path(args.work)
        self.inputs = self.work / "inputs"
        self.env = child_env(self.work)
        self.records: list[dict] = []
        self._probe_cache: dict[int, dict] = {}
        self._rows_before: dict[str, int] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "scale.jsonl"
        self.jsonl.write_text("")

    # ---- output ---------------------------------------------------------------------------
    def record(self, row: dict) -> None:
        self.records.append(row)
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # ---- inputs ---------------------------------------------------------------------------
    def make_inputs(self) -> None:
        names = {s.source for s in self.stages}
        n = max(self.sizes["scraped"])
        # named by what makes it: a smaller or other drop never overwrites a cached one
        self.scraped_master = self.inputs / f"scraped-{n}-b{self.batch}-s{self.args.seed}"
        if "scraped" in names:
            self.log(f"generating {n} scraped images ...")
            meta = gen.write_scraped_drop(
                self.scraped_master, n, self.batch, seed=self.args.seed, jobs=self.args.jobs
            )
            self.record({"kind": "generate", "source": "scraped", "size": n, **_gen_meta(meta)})
        if "fer2013" in names:
            for rows in self.sizes["fer2013"]:
                meta = gen.write_fer2013(self.fer2013_csv(rows), rows, seed=self.args.seed)
                self.record({"kind": "generate", "source": "fer2013", "size": rows, **_gen_meta(meta)})
        if "disfa" in names:
            need: dict[int, int] = {}  # frames per subject -> subjects
            for frames in self.sizes["disfa"]:
                subjects, per = disfa_split(frames)
                need[per] = max(need.get(per, 0), subjects)
            for per, subjects in sorted(need.items()):
                self.log(f"generating DISFA: {subjects} x {per} frames at {self.res[0]}x{self.res[1]} ...")
                meta = gen.write_disfa(
                    self.disfa_root(per),
                    subjects,
                    per,
                    size=self.res,
                    seed=self.args.seed,
                    jobs=self.args.jobs,
                )
                self.record(
                    {
                        "kind": "generate",
                        "source": "disfa",
                        "size": subjects * per,
                        "resolution": list(self.res),
                        **_gen_meta(meta),
                    }
                )

    def disfa_root(self, per: int) -> Path:
        return self.inputs / f"disfa-{per}-{self.res[0]}x{self.res[1]}-s{self.args.seed}"

    def fer2013_csv(self, rows: int) -> Path:
        return self.inputs / "fer2013" / f"fer2013-{rows}-s{self.args.seed}.csv"

    def scraped_level(self, n: int) -> Path:
        """The first n images of the drop, hard-linked in their batch folders (no copy)."""
        if n == max(self.sizes["scraped"]):
            return self.scraped_master
        view = self.scraped_master.with_name(f"{self.scraped_master.name}-first-{n}")
        if (view / gen.DONE).is_file():
            return view
        if view.exists():
            shutil.rmtree(view)
        for batch, indices in gen.scraped_batches(n, self.batch):
            for i in indices:
                rel = f"{batch}/{gen.folder_for(i, self.args.seed)}/img_{i:07d}.jpg"
                dst = view / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.scraped_master / rel, dst)
                except OSError:
                    shutil.copyfile(self.scraped_master / rel, dst)
        (view / gen.DONE).write_text("{}")
        return view

    def student(self) -> Path | None:
        """The YOLO student's weights: --student; else the data root's trained student
        ($FERLAB_HOME, else ./var: models/face_detector/student.pt, as `make demo` trains it);
        else a quick one trained once in the work folder through `ferlab face-detector` (the
        production path: the teachers label, the student learns at 320 px), --student-epochs
        on a small DISFA subject and a scraped batch. A quick student's boxes are poor (more
        crops per frame than a real one: the note says how many); its forward pass costs what
        the architecture costs."""
        candidates = [Path(self.args.student)] if self.args.student else []
        if not candidates:
            homes = [Path(os.environ["FERLAB_HOME"])] if os.environ.get("FERLAB_HOME") else []
            candidates = [h / "models" / "face_detector" / "student.pt" for h in [*homes, REPO / "var"]]
        for pt in candidates:
            if pt.is_file():
                self.record({"kind": "setup", "stage": "student", "path": str(pt), "trained_here": False})
                return pt
        if self.args.student:
            raise SystemExit(f"--student {self.args.student}: no such file")
        epochs = self.args.student_epochs
        home = self.work / f"student-{epochs}ep"
        pt = home / "models" / "face_detector" / "student.pt"
        if pt.is_file():
            self.record(
                {"kind": "setup", "stage": "student", "path": str(pt), "trained_here": True, "epochs": epochs}
            )
            return pt
        from ferlab.samples.disfa import write_disfa_sample
        from ferlab.samples.scraped import write_scraped_sample

        src = self.work / "student-sources"
        for folder in (home, src):
            if folder.exists():
                shutil.rmtree(folder)
        write_disfa_sample(src / "disfa", subjects=("SN001",), frames=40, size=(640, 480))
        batch = write_scraped_sample(src / "scraped", per_label=4, broken=False)
        logs = self.work / "logs" / "student"
        train = ["face-detector", "--epochs", str(epochs), "--max-images", "64", "--batch", "8"]
        for name, cmd in (
            ("ingest_disfa", ferlab_cmd(home, "ingest", "disfa", src / "disfa")),
            ("ingest_scraped", ferlab_cmd(home, "ingest", "images", batch)),
            ("train_student", ferlab_cmd(home, *train, "--device", self.args.device)),
        ):
            self.log(f"student: {name} ...")
            m = run_measured(cmd, logs / f"{name}.log", self.env)
            if name == "train_student":
                self.record({"kind": "setup", "stage": name, "epochs": epochs, **_process(m)})
            if m.rc != 0:
                self.log(f"student: {name} failed (rc {m.rc}): {m.tail}")
                return None
        if not pt.is_file():
            return None
        self.record(
            {"kind": "setup", "stage": "student", "path": str(pt), "trained_here": True, "epochs": epochs}
        )
        return pt

    # ---- stages ---------------------------------------------------------------------------
    def run(self) -> None:
        self.record(
            {
                "kind": "meta",
                "machine": machine(),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
                "sizes": self.sizes,
                "levels": self.levels,
                "scraped_batch": self.batch,
                "disfa_resolution": list(self.res),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
        self.make_inputs()
        student = None
        if any(s.name == "autolabel_disfa_student" for s in self.stages):
            student = self.student()
        for level in range(self.levels):
            home = self.work / "roots" / f"level-{level}"
            if home.exists():
                shutil.rmtree(home)
            self._rows_before = {}
            sizes = {k: v[level] for k, v in self.sizes.items()}
            self.log(f"level {level}: {sizes}")
            for stage in self.stages:
                self.log(f"  {stage.name} ...")
                rows = self.run_stage(stage, level, sizes, home, student)
                for row in rows:
                    self.record(row)
                    if row.get("kind") == "stage":
                        self.log(
                            f"    {row['stage']}: {row['status']} wall {row.get('wall_s') or 0:.2f} s "
                            f"peak {row.get('peak_mb') or 0:.0f} MB {row.get('note', '')}"
                        )
            if not self.args.keep:
                shutil.rmtree(home, ignore_errors=True)

    def run_stage(
        self, stage: Stage, level: int, sizes: dict, home: Path, student: Path | None
    ) -> list[dict]:
        logs = self.work / "logs" / f"level-{level}"
        tag = stage.name.replace(":", "-")
        base = {
            "kind": "stage",
            "stage": stage.name,
            "level": level,
            "unit": stage.unit,
            "table": stage.table,
        }
        size = sizes.get(stage.source)
        extra: dict = {}
        rows: list[dict] = []

        def ferlab(*args) -> dict:
            return _process(run_measured(ferlab_cmd(home, *args), logs / f"{tag}.log", self.env))

        if stage.name == "ingest_fer2013":
            m = ferlab("ingest", "fer2013", self.fer2013_csv(size))
        elif stage.name == "naive_parse_fer2013":
            cmd = [sys.executable, "-m", "benchmarks.scale.naive_fer2013", str(self.fer2013_csv(size))]
            m = _process(run_measured(cmd, logs / f"{tag}.log", self.env))
        elif stage.name == "ingest_scraped":
            drop = self.scraped_level(size)
            parts = []
            stored = 0
            for k, (batch, indices) in enumerate(gen.scraped_batches(size, self.batch)):
                one = _process(
                    run_measured(
                        ferlab_cmd(home, "ingest", "images", drop / batch), logs / f"{tag}-{k}.log", self.env
                    )
                )
                parts.append(one)
                rows.append(
                    {
                        "kind": "batch",
                        "stage": stage.name,
                        "level": level,
                        "batch": k,
                        "stored_before": stored,
                        "images": len(indices),
                        **one,
                    }
                )
                stored += len(indices)
                if one["rc"] != 0:
                    break
            m = {
                "rc": max(p["rc"] for p in parts),
                "wall_s": sum(p["wall_s"] for p in parts),
                "cpu_s": sum(p["cpu_s"] for p in parts),
                "user_s": sum(p["user_s"] for p in parts),
                "sys_s": sum(p["sys_s"] for p in parts),
                "peak_mb": max(p["peak_mb"] for p in parts),
                "tail": next((p["tail"] for p in parts if p["rc"]), ""),
            }
            extra["batches"] = len(parts)
            extra["last_batch_wall_s"] = parts[-1]["wall_s"]
            extra["first_batch_wall_s"] = parts[0]["wall_s"]
        elif stage.name == "ingest_disfa":
            subjects, per = disfa_split(size)
            size = subjects * per
            chosen = [a for s in range(subjects) for a in ("--subject", f"SN{s + 1:03d}")]
            m = ferlab("ingest", "disfa", self.disfa_root(per), *chosen)
        elif stage.name.startswith("autolabel_"):
            if stage.name == "autolabel_disfa_student":
                if student is None:
                    return [
                        {**base, "size": size, "status": "skipped", "note": "no student (training failed)"}
                    ]
                m = ferlab("autolabel", "--source", "disfa", "--spec", student, "--device", self.args.device)
            else:
                m = ferlab("autolabel", "--source", stage.name.split("_", 1)[1], "--device", self.args.device)
            if stage.source == "disfa":
                size = math.prod(disfa_split(size))
        elif stage.name == "version":
            m = ferlab("version")
        elif stage.name.startswith("sql_cli:"):
            m = ferlab("sql", QUERIES[stage.name.split(":", 1)[1]])
        elif stage.name.startswith("sql_call:"):
            probe = self._probe(home, logs, level)
            q = probe.get("queries", {}).get(stage.name.split(":", 1)[1])
            if q is None:
                m = {"rc": probe.get("rc", 1), "tail": probe.get("tail", "probe failed"), "wall_s": None}
            else:
                m = {"rc": 0, "wall_s": q["call_s"], "cpu_s": None, "peak_mb": None}
                extra.update(warm_s=q["warm_s"], result_rows=q["rows"], probe_peak_mb=probe["peak_mb"])
        elif stage.name == "near_duplicates":
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.scale.probe",
                str(home),
                "--skip-queries",
                "--manifest",
                str(self.scraped_master),
                "--upto",
                str(size),
            ]
            m = _process(run_measured(cmd, logs / f"{tag}.log", self.env))
            if m["rc"] == 0:
                check = json.loads(Path(m.pop("log")).read_text().strip().splitlines()[-1])["near_duplicates"]
                extra.update(check)
                extra["note"] = (
                    f"found {check['found_planted']}/{check['planted']} planted, {check['extra']} extra"
                )
        elif stage.name == "review_queue":
            m = ferlab("review-queue", "emotion")
            if m["rc"] != 0:
                return [{**base, "size": self._images(home), "status": "skipped", "note": _last_line(m)}]
        else:
            raise AssertionError(stage.name)

        if stage.source == "all":
            size = self._images(home)
        state = root_state(home)
        added = state.rows.get(stage.table, 0) - self._rows_before.get(stage.table, 0)
        self._rows_before = dict(state.rows)
        note = extra.pop("note", "")
        if stage.name.startswith("autolabel_") and size:
            note = f"{added:,} crops, {added / size:.2f} per {stage.unit[:-1]}"
        status = "ok" if m.get("rc", 0) == 0 else "failed"
        if status == "failed":
            note = (note + " " + _last_line(m)).strip()
        m.pop("log", None)
        rows.append(
            {
                **base,
                "size": size,
                "status": status,
                **{k: v for k, v in m.items() if k != "tail"},
                "disk_mb": round(state.disk_mb, 1),
                "added": added,
                "parts": state.parts,
                "parts_on_disk": state.parts_on_disk,
                "rows": state.rows,
                "note": note,
                **extra,
            }
        )
        return rows

    def _images(self, home: Path) -> int:
        return root_state(home).rows.get("images", 0)

    def _probe(self, home: Path, logs: Path, level: int) -> dict:
        """One probe per level (every sql_call:* stage reads it)."""
        cache = self._probe_cache
        if level not in cache:
            cmd = [sys.executable, "-m", "benchmarks.scale.probe", str(home), "--repeat", "5"]
            m = run_measured(cmd, logs / "probe.log", self.env)
            out = {"rc": m.rc, "tail": m.tail, "peak_mb": round(m.peak_mb, 1)}
            if m.rc == 0:
                out.update(json.loads(Path(m.log).read_text().strip().splitlines()[-1]))
            cache[level] = out
        return cache[level]


def _process(m) -> dict:
    return {
        "rc": m.rc,
        "wall_s": round(m.wall_s, 3),
        "cpu_s": round(m.cpu_s, 3),
        "user_s": round(m.user_s, 3),
        "sys_s": round(m.sys_s, 3),
        "peak_mb": round(m.peak_mb, 1),
        "log": m.log,
        "tail": m.tail,
    }


def _last_line(m: dict) -> str:
    lines = [ln for ln in (m.get("tail") or "").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else f"rc {m.get('rc')}"


def _gen_meta(meta: dict) -> dict:
    return {
        "seconds": meta.get("seconds"),
        "mb": round(meta.get("bytes", 0) / 1e6, 1),
        "planted": meta.get("planted"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", choices=sorted(PRESETS), default="small", help="preset sizes (default small)"
    )
    parser.add_argument("--fer2013", help="FER-2013 rows per level, e.g. 9000,18000,35887")
    parser.add_argument("--scraped", help="scraped images per level, e.g. 10000,30000,100000")
    parser.add_argument(
        "--disfa", help="DISFA frames per level (subjects of <= 4845 frames), e.g. 2400,4845,9690"
    )
    parser.add_argument(
        "--batch", type=int, help="scraped images per ingested batch (small: 500, full: 5000)"
    )
    parser.add_argument("--disfa-res", help="DISFA frame size WxH (default 1024x768; tiny: 320x240)")
    parser.add_argument("--stages", help=f"comma list of stages or groups ({', '.join(GROUPS)}); default all")
    parser.add_argument(
        "--out",
        help="where scale.md, scale.png and scale.jsonl go (default benchmarks/scale/results/ for "
        "--sizes full, results/<preset>/ for the others, so a smoke run never replaces the full one)",
    )
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "ferlab-bench-scale"),
        help="generated inputs (kept and reused), data roots and logs",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating inputs")
    parser.add_argument("--device", default="auto", help="autolabel's --device (auto, cpu, cuda)")
    parser.add_argument("--student", type=Path, help="the YOLO student (.pt) to time (default: train one)")
    parser.add_argument(
        "--student-epochs", type=int, default=1, help="when training a quick student (default 1: speed only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep each level's data root")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.scale.report import write_report

    args = parse_args(argv)
    bench = Bench(args)
    bench.run()
    table = write_report(bench.records, bench.out)
    print(table)
    return 0
