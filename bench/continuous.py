#!/usr/bin/env python
"""Continuous protection against the raw tools, on a PostgreSQL server this benchmark starts itself.

    .venv/bin/python bench/continuous.py [--scale 10] [--runs 3] [--lag-seconds 20] [--clients 4]

A server of its own (``bench/protected.py``: initdb as ``postgres`` on a free port, never the
panel's) holds a ``pgbench -i -s SCALE`` database; a Barman home of its own (a temporary
directory) streams its WAL through a replication slot, as ``continuous_tick`` sets it up.

1. **Base backup** through the panel (a backup run of kind ``base``: ``backup_run_execute`` →
   ``backups.continuous.base_backup``: configuration, ``barman backup --wait`` until its last
   WAL is archived, ``show-backup``, the artifact) against raw ``pg_basebackup`` of the same server with
   the options Barman gives it (``--no-slot --wal-method=none``, spread checkpoint), and, in a second
   row, against ``pg_basebackup`` with its default ``--wal-method=stream``: a backup that carries its own
   WAL and restores alone, as the panel's does once its last WAL is archived. Goal ≤ 1.05×.
2. **Point-in-time restore** through the panel (``restores.pitr.recovered`` to a moment between
   two known rows: check that the moment's WAL is archived — here it is, the row after it was archived
   when it was written — or else close and archive the current segment, ``barman recover``, start the copy,
   wait for promotion, read it, stop and remove it) against raw ``barman recover`` of the same
   base backup to the same moment, started, read and removed the same way. Goal ≤ 1.10×.
3. **WAL receive lag** under ``pgbench -c CLIENTS`` for ``--lag-seconds`` per run: sampled every
   0.1 s, the age of the oldest WAL the server had written that Barman's receiver had not
   (docs/benchmarks.md defines it exactly). Goal: p95 ≤ 5 s.

Each pair runs ``--runs`` times, interleaved; the figures go through ``bench/stats.py`` and are
printed in the protocol of ``bench/protocol.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import protected  # noqa: E402 - after the path is set
from bench.installation import wait_until  # noqa: E402
from bench.protocol import report  # noqa: E402
from bench.stats import Conditions, interleaved, ratios, summary  # noqa: E402

SECRET_VARIABLE = "DRPANEL_SECRET_BENCH_CONTINUOUS_URL"  # noqa: S105 - the name of a variable, not its value
SYSTEM = "benchpitr"
SAMPLE_INTERVAL = 0.1


def log(message: str) -> None:
    print(message, flush=True)


def settle(server: protected.Server) -> None:
    """Write back what the previous measurement left dirty, so it does not slow down the next one."""
    server.execute("CHECKPOINT")
    os.sync()
    time.sleep(0.5)


# --- 1. base backup ---------------------------------------------------------------------------

def raw_base_backup(server: protected.Server, work: Path, *, wal_method: str = "none") -> float:
    """``pg_basebackup`` of the server into a fresh directory: with the options Barman passes it (``none``: no
    WAL, not restorable alone), or streaming the WAL the copy needs beside it (``stream``: restorable alone).

    The copy stays until the whole pair is measured, as the panel's stay in Barman's home: removing gigabytes on a
    file system mounted with ``discard`` (this machine's root) slowed the next copy written there by up to 2.6×
    (pgbench -s 250: 5.7 s for the first raw copy, 14–15.5 s for each one after a removal, the panel's 7.0–7.5 s
    throughout)."""
    dest = work / "raw-base" / f"{time.monotonic_ns()}"
    settle(server)
    started = time.perf_counter()
    subprocess.run([server.tool("pg_basebackup"), "--no-password", f"--pgdata={dest}", "--no-slot",
                    f"--wal-method={wal_method}", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def panel_base_backup(server: protected.Server, system, made: list) -> float:
    """A base backup run through the panel's job body, its artifact kept in ``made``."""
    from backups.models import BackupRun
    from backups.runs import backup_run_execute

    settle(server)
    run = BackupRun.objects.create(system=system, kind="base", trigger=BackupRun.Trigger.MANUAL)
    started = time.perf_counter()
    run = backup_run_execute(run.id)
    seconds = time.perf_counter() - started
    if run.state != BackupRun.State.SUCCEEDED:
        raise SystemExit(f"the panel's base backup failed: {run.error}")
    made.append(run.artifact)
    return seconds


def bench_base_backup(server, system, work: Path, runs: int, label: str) -> list:
    made: list = []
    with Conditions() as around:
        samples = interleaved({"raw": lambda: raw_base_backup(server, work),
                               "ours": lambda: panel_base_backup(server, system, made),
                               "stream": lambda: raw_base_backup(server, work, wal_method="stream")}, runs)
    shutil.rmtree(work / "raw-base", ignore_errors=True)
    ours = summary(samples["ours"])
    size = made[-1].size or 0
    for key, name, what in (("raw", "base backup through the panel vs pg_basebackup", "pg_basebackup"),
                            ("stream", "base backup through the panel vs pg_basebackup --wal-method=stream",
                             "pg_basebackup --wal-method=stream")):
        pair = ratios(samples["ours"], samples[key])
        raw = summary(samples[key])
        overhead = summary([o - r for o, r in zip(samples["ours"], samples[key], strict=True)])
        log(f"base backup: panel {ours.text(' s')}; {what} {raw.text(' s')}; ratio {pair.text('×')}; "
            f"the panel's extra time {overhead.median:.2f} s; {around.text()}")
        report(name, ours=ours.median, raw=raw.median, unit="s", ratio=pair.median, goal="ratio ≤ 1.05",
               met=pair.median <= 1.05, scale=f"{label}, {size / 1e6:.0f} MB",
               note=f"median of per-run ratios; the panel's extra time {overhead.median:.2f} s a backup (barman "
                    "backup --wait until its last WAL is archived, show-backup, the catalog)"
                    + ("" if key == "raw" else "; the raw backup streams its own WAL and restores alone"),
               spread=pair, conditions=around)
    return made


# --- 2. point-in-time restore -----------------------------------------------------------------

def mark_a_moment(server: protected.Server, system, replay_seconds: int) -> datetime:
    """WAL to replay after the base backup (pgbench), a row before the moment returned, a row after it."""
    from backups import barman

    pgbench(server, clients=2, seconds=replay_seconds)
    server.execute("CREATE TABLE marks (id serial PRIMARY KEY, note text NOT NULL)", dbname="bench")
    server.execute("INSERT INTO marks (note) VALUES ('before')", dbname="bench")
    time.sleep(1.1)  # the target is a whole second: keep the rows on either side of it
    moment = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.1)
    server.execute("INSERT INTO marks (note) VALUES ('after')", dbname="bench")
    barman.switch_and_archive(system)
    return moment


def check_marks(rows: list, moment: datetime) -> None:
    if [r[0] for r in rows] != ["before"]:
        raise SystemExit(f"the recovery to {moment} returned {rows}, not exactly the row before it")


def raw_recover(system, backup_id: str, moment: datetime, work: Path) -> float:
    """What an operator would do by hand: ``barman recover`` to the moment, start, wait, read, stop, remove."""
    import psycopg

    from backups import barman

    root = work / "raw-pitr"
    data, sockets = root / "data", root / "socket"
    started = time.perf_counter()
    subprocess.run([barman.executable(), "-c", str(barman.config_path()), "recover", "--target-time",
                    moment.isoformat(), "--target-action", "promote", barman.server_name(system), backup_id,
                    str(data)], check=True, capture_output=True)
    sockets.mkdir(mode=0o700)
    (data / "pg_hba.conf").write_text("local all all trust\n")
    protected.chown_tree(root)
    bindir = protected.bindir()
    port = protected.free_port()
    protected.as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                              f"-p {port} -c listen_addresses='' -c unix_socket_directories='{sockets}' "
                              "-c archive_mode=off -c hot_standby=on", "start"])

    def connect():
        return psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="bench", autocommit=True)

    def promoted():
        with connect() as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    wait_until(promoted, 600, f"the raw recovered copy to reach {moment}", interval=0.2)
    with connect() as conn:
        rows = conn.execute("SELECT note FROM marks ORDER BY id").fetchall()
    protected.as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    shutil.rmtree(root)
    seconds = time.perf_counter() - started
    check_marks(rows, moment)
    return seconds


def panel_recover(system, backup_id: str, moment: datetime, parts: list) -> float:
    from restores.pitr import RecoveryPoint, recovered

    started = time.perf_counter()
    with recovered(system, RecoveryPoint.at(moment), backup_id=backup_id) as copy:
        rows = copy.query("SELECT note FROM marks ORDER BY id", dbname="bench")
        parts.append((copy.recover_seconds, copy.start_seconds))
    seconds = time.perf_counter() - started
    check_marks(rows, moment)
    return seconds


def bench_pitr(server, system, backup_id: str, work: Path, runs: int, label: str, replay_seconds: int) -> None:
    moment = mark_a_moment(server, system, replay_seconds)
    parts: list = []
    with Conditions() as around:
        samples = interleaved({"raw": lambda: (settle(server), raw_recover(system, backup_id, moment, work))[1],
                               "ours": lambda: (settle(server), panel_recover(system, backup_id, moment, parts))[1]},
                              runs)
    pair = ratios(samples["ours"], samples["raw"])
    ours, raw = summary(samples["ours"]), summary(samples["raw"])
    recover = summary([p[0] for p in parts])
    log(f"point-in-time restore to {moment:%H:%M:%S} UTC: panel {ours.text(' s')} (barman recover "
        f"{recover.median:.2f} s of it); raw {raw.text(' s')}; ratio {pair.text('×')}; {around.text()}")
    report("point-in-time restore through the panel vs barman recover", ours=ours.median, raw=raw.median, unit="s",
           ratio=pair.median, goal="ratio ≤ 1.10", met=pair.median <= 1.10,
           scale=f"{label}, {replay_seconds} s of pgbench WAL to replay",
           note="both: barman recover of the same base backup to the same moment, started until promoted, read, "
                "stopped, removed; the panel also checks that Barman's archive holds a transaction past the moment "
                "(pg_waldump of the newest archived segment) and closes and archives the current segment when not",
           spread=pair, conditions=around)


# --- 3. WAL receive lag -----------------------------------------------------------------------

def pgbench(server: protected.Server, *, clients: int, seconds: int) -> str:
    done = subprocess.run([server.tool("pgbench"), "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T",
                           str(seconds), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "bench"],
                          check=True, capture_output=True, text=True, timeout=seconds + 300)
    return done.stdout


def lags(samples: list[tuple[float, int, int]]) -> list[float]:
    """The receive lag at each ``(time, server's LSN, Barman's written LSN)`` sample (docs/benchmarks.md).

    0 when Barman holds everything the server had; else the time since the last sample at which the server's
    position was still within what Barman holds now: everything Barman lacks was written after that.
    """
    result = []
    for i, (at, _, written) in enumerate(samples):
        if written >= samples[i][1]:
            result.append(0.0)
            continue
        within = [t for t, position, _ in samples[:i + 1] if position <= written]
        result.append(at - (within[-1] if within else samples[0][0]))
    return result


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def lag_run(server: protected.Server, streaming: Path, clients: int, seconds: int) -> dict:
    from bench.protected import parse_lsn, written_lsn

    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample():
        with server.connect() as conn:
            while not stop.is_set():
                position = parse_lsn(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))
                samples.append((time.monotonic(), position, written_lsn(streaming)))
                stop.wait(SAMPLE_INTERVAL)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = pgbench(server, clients=clients, seconds=seconds)
    stop.set()
    sampler.join()
    end = parse_lsn(str(server.execute("SELECT pg_current_wal_lsn()")[0][0]))
    # A last record may end in zero bytes (a page image), which ``written_lsn`` cannot tell from unwritten space:
    # one commit after it, whose record ends in data, shows when Barman holds everything pgbench wrote.
    server.execute("SELECT txid_current()")
    waited = time.monotonic()
    wait_until(lambda: written_lsn(streaming) >= end, 120, "Barman's receiver to write the WAL pgbench wrote")
    measured = lags(samples)
    tps = re.search(r"tps = ([0-9.]+)", output)
    return {"p95": p95(measured), "max": max(measured), "samples": len(samples),
            "tps": float(tps[1]) if tps else None, "wal_mb_s": (samples[-1][1] - samples[0][1]) / 1e6 / seconds,
            "catch_up_s": time.monotonic() - waited}


def bench_lag(server, system, runs: int, clients: int, seconds: int, label: str) -> None:
    from backups import barman

    streaming = barman.home() / barman.server_name(system)
    results = []
    with Conditions() as around:
        for n in range(runs):
            results.append(lag_run(server, streaming, clients, seconds))
            r = results[-1]
            log(f"  lag run {n + 1}: p95 {r['p95']:.2f} s, max {r['max']:.2f} s over {r['samples']} samples; "
                f"{r['tps']} tps, {r['wal_mb_s']:.1f} MB/s of WAL; caught up {r['catch_up_s']:.2f} s after pgbench")
    p95s = summary([r["p95"] for r in results])
    worst = max(r["max"] for r in results)
    log(f"WAL receive lag under pgbench -c {clients}: p95 {p95s.text(' s')}; {around.text()}")
    report(f"WAL receive lag p95 under pgbench -c {clients}", ours=p95s.median, raw=None, unit="s",
           goal="p95 ≤ 5 s", met=p95s.median <= 5.0, scale=f"{label}, {runs} × {seconds} s",
           note=f"sampled every {SAMPLE_INTERVAL} s; worst sample {worst:.2f} s; "
                f"{summary([r['wal_mb_s'] for r in results]).median:.1f} MB/s of WAL, "
                f"{summary([r['tps'] or 0 for r in results]).median:.0f} tps",
           spread=p95s, conditions=around)


# --- the run ----------------------------------------------------------------------------------

def prepare(panel_db: str, work: Path) -> None:
    """The panel's settings for this benchmark: its own database, queues and Barman home; Django set up."""
    from bench.backup import prepare_services

    prepare_services(panel_db)
    os.environ["DRPANEL_BARMAN_HOME"] = str(work / "barman")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    from bench.installation import clear_leftovers

    cleared = clear_leftovers()
    log(f"installation {os.environ['DRPANEL_INSTALLATION_ID']}: cleared {cleared['jobs']} job(s) and "
        f"{cleared['workers']} worker(s) left by an earlier run")


def start_streaming(server: protected.Server, system) -> None:
    from backups.continuous import continuous_tick

    continuous_tick()  # writes the configuration and runs barman cron: the receiver starts, with its slot
    wait_until(lambda: server.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                                      "'barman_receive_wal' AND state = 'streaming'")[0][0], 120,
               "Barman's receiver to stream from the benchmark's server", interval=0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale of the protected database (10 ≈ 160 MB)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each pair, and lag runs")
    parser.add_argument("--lag-seconds", type=int, default=20, help="pgbench duration of each lag run")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients during the lag runs")
    parser.add_argument("--replay-seconds", type=int, default=5,
                        help="pgbench after the base backup, before the moment recovered (WAL to replay)")
    parser.add_argument("--skip", action="append", default=[], choices=["base", "pitr", "lag"])
    parser.add_argument("--panel-db", default="drpanel_bench_continuous")
    args = parser.parse_args()

    tag = re.sub(r"[^a-z0-9_]", "_", args.panel_db.lower())
    work = Path(tempfile.mkdtemp(prefix=f"{protected.LEFTOVER_PREFIX}{tag}-"))
    work.chmod(0o711)  # the server's directory inside it belongs to the user that runs PostgreSQL
    killed = protected.clear_leftovers(tag, keep=work)
    prepare(args.panel_db, work)
    log(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; cleared {killed} process(es) "
        "of an interrupted run")
    from backups.models import System

    server = protected.Server(parent=work)
    label = f"pgbench -s {args.scale}"
    try:
        os.environ[SECRET_VARIABLE] = server.url("bench")
        server.execute("CREATE DATABASE bench")
        started = time.monotonic()
        subprocess.run([server.tool("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p",
                        str(server.port), "-U", "postgres", "bench"], check=True, capture_output=True)
        size = server.execute("SELECT pg_database_size('bench')")[0][0]
        log(f"protected server on port {server.port}: {label}, {size / 1e6:.0f} MB, built in "
            f"{time.monotonic() - started:.0f} s")
        forget(SYSTEM)
        system, _ = System.objects.update_or_create(name=SYSTEM, defaults={
            "database_ref": f"env:{SECRET_VARIABLE}", "continuous_enabled": True})
        start_streaming(server, system)
        made = []
        if "base" not in args.skip or "pitr" not in args.skip:
            runs = args.runs if "base" not in args.skip else 1
            made = bench_base_backup(server, system, work, runs, label)
        if "pitr" not in args.skip:
            bench_pitr(server, system, made[-1].manifest["backup_id"], work, args.runs, label, args.replay_seconds)
        if "lag" not in args.skip:
            bench_lag(server, system, args.runs, args.clients, args.lag_seconds, label)
    finally:
        protected.stop_receivers(work)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        forget(SYSTEM)
    return 0


def forget(name: str) -> None:
    """What an earlier run left of the benchmark's system in its own panel database: runs, base artifacts, the
    streaming state and WAL catalog of a server and a Barman home that are gone."""
    from backups.models import Artifact, BackupRun, ContinuousState, WalTimeline
    from restores.models import VerificationRun

    BackupRun.objects.filter(system__name=name).delete()
    # A new base backup asks for its own manifest check: those runs protect the artifacts they verified.
    VerificationRun.objects.filter(artifact__system__name=name).delete()
    Artifact.objects.filter(system__name=name).delete()
    ContinuousState.objects.filter(system__name=name).delete()
    WalTimeline.objects.filter(system__name=name).delete()


if __name__ == "__main__":
    sys.exit(main())
