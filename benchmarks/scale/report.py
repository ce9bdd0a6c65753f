"""The scale benchmark's report from its JSON lines: per stage and size the measurements, per
stage the fitted growth exponents, throughput and projections, the goals checked, a Markdown
file (scale.md) and a log-log plot (scale.png).

    .venv/bin/python -m benchmarks.scale.report [RESULTS_DIR]   # redo the report from scale.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.scale.fit import fit_power, local_exponent, marginal_rate, project_memory

MILLION = 1_000_000
FULL_DISFA = 27 * 4845 * 2  # 27 subjects x 4,845 frames x 2 cameras = 261,630 frames
GOAL_EXPONENT = 1.1
GOAL_QUERY_S = 0.3
GOAL_PEAK_MB = 4096
GOAL_STUDENT_FPS = 60
GOAL_FER_RATIO = 0.5


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stage_rows(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "stage"]


def summarize(records: list[dict]) -> list[dict]:
    """One dict per stage (in run order): its ok points, exponents, throughput, projections."""
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in stage_rows(records):
        by_stage[r["stage"]].append(r)
    out = []
    for stage, rows in by_stage.items():
        ok = sorted(
            (r for r in rows if r["status"] == "ok" and r.get("wall_s") and r.get("size")),
            key=lambda r: r["size"],
        )
        sizes = [r["size"] for r in ok]
        walls = [r["wall_s"] for r in ok]
        cpus = [r["cpu_s"] for r in ok if r.get("cpu_s")]
        peaks = [r["peak_mb"] for r in ok if r.get("peak_mb")]
        wall_fit = fit_power(sizes, walls)
        cpu_fit = fit_power(sizes, cpus) if len(cpus) == len(sizes) else None
        s = {
            "stage": stage,
            "unit": rows[0]["unit"],
            "status": "ok" if ok else rows[-1]["status"],
            "note": "" if ok else rows[-1].get("note", ""),
            "sizes": sizes,
            "walls": walls,
            "peaks": peaks if len(peaks) == len(sizes) else [],
            "exp_wall": wall_fit.exponent if wall_fit else None,
            "r2_wall": wall_fit.r2 if wall_fit else None,
            "exp_cpu": cpu_fit.exponent if cpu_fit else None,
            "local_wall": local_exponent(sizes, walls),
            "rate": sizes[-1] / walls[-1] if ok else None,  # units/s, whole process, largest size
            "marginal_rate": marginal_rate(sizes, walls),
            "t_1m": wall_fit.at(MILLION) if wall_fit else None,
            "peak_1m": project_memory(sizes, peaks, MILLION) if len(peaks) == len(sizes) and peaks else None,
            "t_full_disfa": wall_fit.at(FULL_DISFA) if wall_fit and rows[0]["unit"] == "frames" else None,
            "peak_full_disfa": (
                project_memory(sizes, peaks, FULL_DISFA)
                if rows[0]["unit"] == "frames" and peaks and len(peaks) == len(sizes)
                else None
            ),
            "max_wall": max(walls) if walls else None,
        }
        out.append(s)
    return out


def goals(records: list[dict], summary: list[dict]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) rows."""
    by = {s["stage"]: s for s in summary}
    out: list[tuple[str, str, str]] = []
    fitted = [s for s in summary if s["exp_wall"] is not None and not s["stage"].startswith("naive_")]
    worst = max(fitted, key=lambda s: max(s["exp_wall"], s["exp_cpu"] or 0), default=None)
    if worst is not None:
        over = [s["stage"] for s in fitted if max(s["exp_wall"], s["exp_cpu"] or 0) > GOAL_EXPONENT]
        out.append(
            (
                f"every stage's growth exponent <= {GOAL_EXPONENT}",
                f"largest: {worst['stage']} {_f(max(worst['exp_wall'], worst['exp_cpu'] or 0), 2)}"
                + (f"; over: {', '.join(over)}" if over else ""),
                _verdict(not over),
            )
        )
    calls = [s for s in summary if s["stage"].startswith("sql_call:") and s["walls"]]
    if calls:
        worst_q = max(calls, key=lambda s: s["max_wall"])
        proj = max((s["t_1m"] or 0) for s in calls)
        out.append(
            (
                f"a query <= {GOAL_QUERY_S} s at any size (Warehouse.sql, one call)",
                f"slowest measured {worst_q['stage']} {_f(worst_q['max_wall'], 3)} s; projected at 1M: {_f(proj, 2)} s",
                _verdict(worst_q["max_wall"] <= GOAL_QUERY_S and proj <= GOAL_QUERY_S),
            )
        )
    mem = [s for s in summary if s["peak_1m"] is not None and not s["stage"].startswith("naive_")]
    if mem:
        worst_m = max(mem, key=lambda s: s["peak_1m"])
        out.append(
            (
                f"peak memory <= {GOAL_PEAK_MB / 1024:.0f} GB per stage at 1,000,000 faces (projected)",
                f"largest: {worst_m['stage']} {_f(worst_m['peak_1m'] / 1024, 2)} GB "
                f"(measured {_f(max(worst_m['peaks']), 0)} MB at {worst_m['sizes'][-1]:,})",
                _verdict(worst_m["peak_1m"] <= GOAL_PEAK_MB),
            )
        )
    st = by.get("autolabel_disfa_student")
    student = next((r for r in records if r.get("stage") == "student" and r.get("kind") == "setup"), None)
    if st and st["rate"]:
        last = max(
            (r for r in stage_rows(records) if r["stage"] == st["stage"] and r["status"] == "ok"),
            key=lambda r: r["size"],
        )
        which = (
            f"quick {student.get('epochs')}-epoch student"
            if student and student.get("trained_here")
            else "student"
        )
        out.append(
            (
                f"DISFA auto-labeled by the YOLO student at >= {GOAL_STUDENT_FPS} frames/s",
                f"{_f(st['rate'], 1)} frames/s whole process at {st['sizes'][-1]:,} frames; "
                f"{_f(st['marginal_rate'], 1)} frames/s marginal ({which}: {last.get('note', '')})",
                _verdict(st["rate"] >= GOAL_STUDENT_FPS),
            )
        )
    elif st:
        out.append(
            (f"DISFA auto-labeled by the YOLO student at >= {GOAL_STUDENT_FPS} frames/s", st["note"], "n/a")
        )
    fer, naive = by.get("ingest_fer2013"), by.get("naive_parse_fer2013")
    if fer and naive and fer["walls"] and naive["walls"]:
        n = max(set(fer["sizes"]) & set(naive["sizes"]), default=None)
        if n:
            ratio = fer["walls"][fer["sizes"].index(n)] / naive["walls"][naive["sizes"].index(n)]
            out.append(
                (
                    f"FER-2013 ingest (whole process) <= {GOAL_FER_RATIO}x a naive parse",
                    f"{_f(ratio, 2)}x at {n:,} rows",
                    _verdict(ratio <= GOAL_FER_RATIO),
                )
            )
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1000 and digits <= 2:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _g(v) -> str:
    """A projection: thousands separated from 100 up, 3 significant digits below."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def measurements_table(records: list[dict]) -> str:
    rows = []
    for r in stage_rows(records):
        table = r.get("table", "-")
        parts = r.get("parts") or {}
        counts = r.get("rows") or {}
        if table in parts:
            n_parts, n_rows = parts[table], counts.get(table, 0)
        else:
            table, n_parts, n_rows = "(all)", sum(parts.values()) if parts else "-", "-"
        wall = r.get("wall_s")
        per = f"{wall / r['size'] * 1000:.3g}" if wall and r.get("size") else "-"
        note = r.get("note", "") if r["status"] == "ok" else f"{r['status']}: {r.get('note', '')}"
        rows.append(
            [
                r["stage"],
                f"{r.get('size') or 0:,} {r['unit']}",
                _f(wall, 3),
                _f(r.get("cpu_s"), 2),
                _f(r.get("peak_mb"), 0),
                _f(r.get("disk_mb"), 1),
                table,
                n_parts,
                f"{n_rows:,}" if isinstance(n_rows, int) else n_rows,
                per,
                note.replace("|", "/")[:120],
            ]
        )
    return _md_table(
        [
            "stage",
            "size",
            "wall s",
            "CPU s",
            "peak MB",
            "disk MB",
            "table",
            "parts",
            "rows",
            "ms/unit",
            "note",
        ],
        rows,
    )


def growth_table(summary: list[dict]) -> str:
    rows = []
    for s in summary:
        rows.append(
            [
                s["stage"],
                ", ".join(f"{n:,}" for n in s["sizes"]) or "-",
                _f(s["exp_wall"]) + (f" (R² {s['r2_wall']:.2f})" if s["r2_wall"] is not None else ""),
                _f(s["exp_cpu"]),
                _f(s["local_wall"]),
                _f(s["rate"], 1),
                _f(s["marginal_rate"], 1),
                f"x{MILLION / s['sizes'][-1]:,.0f}" if s["sizes"] else "-",
                _g(s["t_1m"]),
                _g(s["peak_1m"]),
                (_g(s["t_full_disfa"]) + " s / " + _g(s["peak_full_disfa"]) + " MB")
                if s["t_full_disfa"] is not None
                else "-",
                s["note"][:80] if s["status"] != "ok" else "",
            ]
        )
    return _md_table(
        [
            "stage",
            "sizes",
            "exponent (wall)",
            "exponent (CPU)",
            "local exp. (2 largest)",
            "units/s (largest, whole process)",
            "units/s marginal",
            "to 1M",
            "time at 1M s",
            "peak at 1M MB",
            "full DISFA (261,630 frames)",
            "note",
        ],
        rows,
    )


def plot(summary: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(15, 6.5))
    colors = plt.get_cmap("tab20")
    shown = [s for s in summary if len(s["sizes"]) >= 1]
    for k, s in enumerate(shown):
        c = colors(k % 20)
        style = "--" if s["stage"].startswith(("sql_", "naive_")) else "-"
        label = f"{s['stage']} (b={_f(s['exp_wall'])})"
        ax_t.plot(s["sizes"], s["walls"], "o" + style, color=c, label=label, ms=4)
        if s["peaks"]:
            ax_m.plot(s["sizes"], s["peaks"], "o" + style, color=c, label=s["stage"], ms=4)
        if s["exp_wall"] is not None and len(s["sizes"]) >= 2:
            xs = np.geomspace(min(s["sizes"]), min(MILLION, 10 * max(s["sizes"])), 20)
            fit = s["t_1m"] / MILLION ** s["exp_wall"]
            ax_t.plot(xs, fit * xs ** s["exp_wall"], ":", color=c, lw=0.8)
    for ax, ylabel, title in (
        (ax_t, "wall time, s (dotted: the fit, out to 10x the largest size)", "time vs size"),
        (ax_m, "peak RSS, MB", "peak memory vs size"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("size (FER rows / scraped images / DISFA frames / images stored)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    for ax, y, text in (
        (ax_t, GOAL_QUERY_S, " 0.3 s (query goal)"),
        (ax_m, GOAL_PEAK_MB, " 4 GB (goal at 1M faces)"),
    ):
        ax.axhline(y, color="grey", lw=0.6)
        ax.text(0.01, y, text, fontsize=7, color="grey", va="bottom", transform=ax.get_yaxis_transform())
    ax_t.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(records: list[dict], summary: list[dict], plotted: bool) -> str:
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    m = meta.get("machine", {})
    parts = [
        "# Scale benchmark (`make bench-scale`)",
        "",
        f"Run {meta.get('started', '?')} on {m.get('cpus', '?')} CPUs, {m.get('mem_total_gb', '?')} GB "
        f"(load {m.get('loadavg_1m', '?')} at start); sizes per level {meta.get('sizes', {})}; scraped batches "
        f"of {meta.get('scraped_batch', '?')}; DISFA frames {meta.get('disfa_resolution', '?')}. "
        "Every stage is its own process of the real CLI on a fresh data root per level: wall = "
        "perf_counter, CPU = user + sys, peak = the process's max RSS (wait4); disk, parts and rows "
        "are the data root's after the stage (parts: *.parquet of the table shown, rows: the rows "
        "stored in them). Exponent: least-squares slope of log time on log size (process start "
        "included, so small sizes flatten it); local: between the two largest sizes. Projections "
        "extrapolate the fits (the `to 1M` factor says how far): from sizes below a stage's chunk "
        "(scraped batch, autolabel's --commit-every) they miss where memory levels off. On a shared "
        "machine wall time follows the load: the CPU exponent is the steadier one.",
        "",
        "## Goals",
        "",
        _md_table(["goal", "measured", "verdict"], [list(g) for g in goals(records, summary)]),
        "",
        "## Growth per stage",
        "",
        growth_table(summary),
        "",
    ]
    if plotted:
        parts += ["![time and peak memory vs size](scale.png)", ""]
    parts += ["## Measurements", "", measurements_table(records), ""]
    gens = [r for r in records if r.get("kind") == "generate"]
    if gens:
        parts += [
            "## Inputs (generated once, reused)",
            "",
            _md_table(
                ["source", "size", "seconds", "MB", "planted near-duplicates"],
                [
                    [g["source"], f"{g['size']:,}", _f(g["seconds"]), _f(g["mb"], 1), g.get("planted") or "-"]
                    for g in gens
                ],
            ),
            "",
        ]
    batches = [r for r in records if r.get("kind") == "batch"]
    if batches:
        parts += [
            "## Scraped batches (one `ferlab ingest images` each)",
            "",
            _md_table(
                ["level", "batch", "images stored before", "images", "wall s", "CPU s", "peak MB"],
                [
                    [
                        b["level"],
                        b["batch"],
                        f"{b['stored_before']:,}",
                        b["images"],
                        _f(b["wall_s"], 2),
                        _f(b["cpu_s"], 2),
                        _f(b["peak_mb"], 0),
                    ]
                    for b in batches
                ],
            ),
            "",
        ]
    setups = [r for r in records if r.get("kind") == "setup" and "wall_s" in r]
    students = [r for r in records if r.get("kind") == "setup" and r.get("stage") == "student"]
    if setups or students:
        parts += [
            "Setup (not scaled): "
            + "; ".join(
                [f"{r['stage']} {_f(r['wall_s'], 1)} s, peak {_f(r['peak_mb'], 0)} MB" for r in setups]
                + [
                    f"YOLO student {r['path']}"
                    + (
                        f" (trained here, {r.get('epochs')} epoch(s): its speed, not its accuracy)"
                        if r.get("trained_here")
                        else ""
                    )
                    for r in students
                ]
            ),
            "",
        ]
    return "\n".join(parts)


def write_report(records: list[dict], out: Path) -> str:
    """scale.md and scale.png in `out`; returns the text printed: goals + growth + measurements."""
    out = Path(out)
    summary = summarize(records)
    plotted = plot(summary, out / "scale.png") if summary else False
    text = markdown(records, summary, plotted)
    (out / "scale.md").write_text(text)
    (out / "scale-summary.json").write_text(json.dumps(summary, indent=1))
    return text


def merged(records: list[dict], extra: list[dict]) -> list[dict]:
    """`records` plus the stage rows of `extra` (another run's scale.jsonl) for stages `records`
    has none of: a stage measured in a run of its own (other sizes, a given student) joins the
    report of the main run."""
    have = {r["stage"] for r in stage_rows(records)}
    return records + [
        r for r in extra if r.get("kind") in ("stage", "batch", "setup") and r.get("stage") not in have
    ]


def main() -> None:
    """`python -m benchmarks.scale.report [OUT] [OTHER_RUN_DIR ...]`: the report of OUT's
    scale.jsonl (default results/), with the stages only the other runs measured added; the
    merged rows are written back to OUT/scale.jsonl."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    records = load(out / "scale.jsonl")
    for other in sys.argv[2:]:
        records = merged(records, load(Path(other) / "scale.jsonl"))
    if len(sys.argv) > 2:
        (out / "scale.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(write_report(records, out))


if __name__ == "__main__":
    main()
