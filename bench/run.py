#!/usr/bin/env python
"""``make bench``: every benchmark in one run, one table of ratios against the goals.

Runs each script of ``BENCHMARKS`` (one after the other: they measure time on a shared machine)
at the chosen scale, keeps each one's output in ``bench-results/<timestamp>/<name>.log``, reads
the figures they print in the protocol of ``bench/protocol.py``, and prints one table — also
written to ``bench-results/<timestamp>.md`` and ``.json``. A script that prints no protocol line
(or fails) is listed as "not reported", with where its output is.

    .venv/bin/python bench/run.py [--scale quick|default|full] [--only backup --only jobs] [--prefix drpanel_bench]
    .venv/bin/python bench/run.py --scale full --only audit      # audit at 1M, then at 100k, 1M and 10M events
    .venv/bin/python bench/run.py --scale full --only scaling    # the scaling table's rows only

Scales: ``quick`` validates the scripts in a few minutes; ``default`` fits in about 10–15
minutes on the 2-core development machine; ``full`` uses the issue's sizes (pgbench -s 50, a
1.5 GB realistic database, 100,000 artifacts, 1,000,000 audit events) and takes much longer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.protocol import parse  # noqa: E402 - after the path is set
from bench.stats import Conditions  # noqa: E402

SCALES = ("quick", "default", "full")


def benchmarks(scale: str, prefix: str, server_url: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of every benchmark at a scale."""
    from drpanel.runtime import with_database_name

    py = sys.executable
    backup = {"quick": ["--quick", "--repeats", "2"],
              "default": ["--scale", "50", "--realistic-mb", "600", "--list-size", "100000", "--repeats", "3"],
              "full": []}[scale]
    audit_events = {"quick": "20000", "default": "500000", "full": "1000000"}[scale]
    restore = {"quick": ["--scale", "2", "--rounds", "1", "--swaps", "5", "--repeat", "3"],
               "default": ["--scale", "30", "--partitions", "2", "--rounds", "3"],
               "full": ["--scale", "50", "--partitions", "4"]}[scale]
    # The loop through the panel's jobs (verified restore, decrypt-level verification, structure check, click →
    # job started); the swap is restore_ops' measurement, so it is not taken twice.
    loop = {"quick": ["--quick"],
            "default": ["--scale", "10", "--realistic-mb", "150", "--rounds", "3", "--verify-repeat", "3"],
            "full": []}[scale]
    requests = {"quick": "10", "default": "30", "full": "30"}[scale]
    # Continuous protection on a server of its own: base backup, point-in-time restore, WAL receive lag.
    continuous = {"quick": ["--scale", "1", "--runs", "2", "--lag-seconds", "5", "--replay-seconds", "1"],
                  "default": ["--scale", "10", "--runs", "3", "--lag-seconds", "20", "--replay-seconds", "5"],
                  "full": ["--scale", "100", "--runs", "3", "--lag-seconds", "60", "--replay-seconds", "30"]}[scale]
    return [
        ("backup", [py, "bench/backup.py", "--panel-db", prefix, *backup]),
        ("audit", [py, "bench/audit.py", "--events", audit_events,
                   "--database-url", with_database_name(server_url, f"{prefix}_audit_bench")]),
        ("restore_ops", [py, "bench/restore_ops.py", *restore]),
        ("restore", [py, "bench/restore.py", "--panel-db", f"{prefix}_loop", "--skip", "swap", *loop]),
        ("jobs", [py, "bench/jobs.py", "--requests", requests, "--panel-db", f"{prefix}_jobs"]),
        ("continuous", [py, "bench/continuous.py", "--panel-db", f"{prefix}_continuous", *continuous]),
    ]


# How cost grows (issue 16, item 4), run by ``SCALE=full`` after the benchmarks above.
SCALING_DATABASE_MB = (500, 1000, 2000, 4000)
SCALING_ARTIFACTS = (10_000, 100_000, 1_000_000)
SCALING_EVENTS = (100_000, 1_000_000, 10_000_000)
SCALING_SYSTEMS = (1, 10, 100)


# The part each scaling row belongs to (``--only backup`` runs the backup benchmark and its scaling rows;
# ``--only scaling`` every scaling row and nothing else).
SCALING_PARTS = (("backup at ", "backup"), ("verified restore at ", "restore"), ("artifact list at ", "list"),
                 ("audit at ", "audit"), ("dashboard with ", "dashboard"))
# The dashboard's rows all hold about this many artifacts, spread over their systems.
SCALING_DASHBOARD_ARTIFACTS = 100_000


def parts(name: str) -> set[str]:
    """The names ``--only`` selects the benchmark ``name`` by: itself, and a scaling row's part and "scaling"."""
    for prefix, part in SCALING_PARTS:
        if name.startswith(prefix):
            return {name, part, "scaling"}
    return {name}


def selected(name: str, only: list[str]) -> bool:
    """Whether ``--only`` (empty: everything) selects the benchmark ``name``."""
    return not only or bool(parts(name) & set(only))


def scaling(prefix: str, server_url: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of the scaling table's rows: one benchmark script per size."""
    from drpanel.runtime import with_database_name

    py = sys.executable
    rows = []
    for mb in SCALING_DATABASE_MB:
        rows.append((f"backup at {mb} MB", [py, "bench/backup.py", "--panel-db", prefix, "--skip", "pgbench",
                                            "--skip", "list", "--realistic-mb", str(mb), "--repeats", "3"]))
        rows.append((f"verified restore at {mb} MB", [py, "bench/restore.py", "--panel-db", f"{prefix}_loop",
                                                      "--skip", "pgbench", "--skip", "swap", "--skip", "click",
                                                      "--realistic-mb", str(mb), "--rounds", "3"]))
    for count in SCALING_ARTIFACTS:
        rows.append((f"artifact list at {count:,}", [py, "bench/backup.py", "--panel-db", prefix, "--skip", "pgbench",
                                                     "--skip", "realistic", "--list-size", str(count)]))
    for events in SCALING_EVENTS:
        rows.append((f"audit at {events:,} events", [py, "bench/audit.py", "--events", str(events), "--database-url",
                                                     with_database_name(server_url, f"{prefix}_audit_bench")]))
    for systems in SCALING_SYSTEMS:
        rows.append((f"dashboard with {systems} systems", [py, "bench/health.py", "--systems", str(systems),
                                                          "--artifacts", str(SCALING_DASHBOARD_ARTIFACTS),
                                                          "--database-url",
                                                          with_database_name(server_url, f"{prefix}_health_bench")]))
    return rows


def machine() -> dict:
    import psycopg

    from drpanel import runtime

    plan = runtime.prepare()
    with psycopg.connect(runtime.with_database_name(plan.database_url, "postgres")) as conn:
        server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"host": platform.node(), "cpus": os.cpu_count(), "memory_gib": round(memory, 1),
            "python": platform.python_version(), "postgresql": server, "commit": commit,
            "load_average_start": round(os.getloadavg()[0], 2), "server_url": plan.database_url}


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | ours | raw tool | ratio | goal | met | scale |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "—"}[r.get("met")]
        ratio = f"{r['ratio']:.2f}×" if r.get("ratio") is not None else "—"
        lines.append(f"| {r['name']} | {fmt(r.get('ours'), r.get('unit', ''))} | {fmt(r.get('raw'), r.get('unit', ''))}"
                     f" | {ratio} | {r.get('goal', '')} | {met} | {r.get('scale', '')} |")
    return "\n".join(lines)


def conditions_table(rows: list[dict]) -> str:
    """How each figure was taken: its runs and spread, and what else the machine did meanwhile."""
    lines = ["| benchmark | runs | min – max | spread | load average before → after | beside other work |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r.get("conditions") or {}
        spread = f"{r['spread']:.0%}" if r.get("spread") is not None else "—"
        span = f"{fmt(r.get('low'))} – {fmt(r.get('high'))}" if r.get("low") is not None else "—"
        load = f"{c['load_before']:.2f} → {c['load_after']:.2f}" if c else "—"
        other = ("**yes**, " if c.get("busy") else "no, ") + f"{c['others_cores']:.2f} cores" if c else "—"
        lines.append(f"| {r['name']} | {r.get('runs') or '—'} | {span} | {spread} | {load} | {other} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="default")
    parser.add_argument("--only", action="append", default=[],
                        help="run only these benchmarks: by name, or by part at full scale (backup, restore, list, "
                             "audit, dashboard: the benchmark and its scaling rows; scaling: every scaling row)")
    parser.add_argument("--prefix", default="drpanel_bench", help="prefix of the benchmarks' own databases")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()

    info = machine()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    logs = out / stamp
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    print(f"make bench, scale {args.scale}: {info['cpus']} CPUs, {info['memory_gib']} GiB, PostgreSQL "
          f"{info['postgresql']}, load average {info['load_average_start']}; logs in {logs}", flush=True)
    rows, runs = [], []
    server_url = info.pop("server_url")
    planned = benchmarks(args.scale, args.prefix, server_url)
    if args.scale == "full":
        planned += scaling(args.prefix, server_url)
    for name, argv in planned:
        if not selected(name, args.only):
            continue
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        log_path = logs / f"{name}.log"
        with open(log_path, "w") as log, Conditions() as around:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            output = []
            for line in proc.stdout:
                log.write(line)
                output.append(line)
                print(f"   {line}", end="", flush=True)
            status = proc.wait()
        seconds = time.monotonic() - started
        figures = parse("".join(output))
        runs.append({"name": name, "argv": argv[1:], "exit_status": status, "seconds": round(seconds, 1),
                     "conditions": around.as_dict(),
                     "log": str(log_path.relative_to(ROOT) if log_path.is_relative_to(ROOT) else log_path)})
        for figure in figures:
            # A script that did not say what ran beside it gets its whole run's conditions.
            rows.append({"benchmark": name, "conditions": around.as_dict(), **figure})
        if not figures or status != 0:
            why = f"exited with {status}" if status else "printed no BENCH line"
            rows.append({"benchmark": name, "name": f"{name} (not reported)", "ours": None, "raw": None,
                         "ratio": None, "goal": "", "met": None, "scale": "",
                         "note": f"{why}; see {runs[-1]['log']}"})
        print(f"== {name}: {seconds:.0f} s, {len(figures)} figure(s), exit status {status}", flush=True)
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    text = table(rows) + "\n\nHow each figure was taken:\n\n" + conditions_table(rows)
    if any((r.get("conditions") or {}).get("busy") for r in rows):
        text += ("\n\nFigures marked \"beside other work\" were taken while other processes kept the machine busy: "
                 "their times and ratios are not those of a quiet machine.")
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r.get("note")]
    header = (f"Benchmarks at scale **{args.scale}**, {stamp}, commit {info['commit']}: {info['cpus']} CPUs, "
              f"{info['memory_gib']} GiB, PostgreSQL {info['postgresql']}, Python {info['python']}; load average "
              f"{info['load_average_start']} at the start, {info['load_average_end']} at the end.")
    (out / f"{stamp}.md").write_text(f"{header}\n\n{text}\n\n" + "\n".join(notes) + "\n")
    (out / f"{stamp}.json").write_text(json.dumps({"scale": args.scale, "at": stamp, "machine": info,
                                                   "runs": runs, "results": rows}, indent=2) + "\n")
    print()
    print(header)
    print(text)
    print("\n".join(notes))
    print(f"\nwritten to {out / stamp}.md and .json")
    # A missed goal is a measurement, not a failure of the command; a benchmark that crashed is.
    return 1 if any(r["exit_status"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
