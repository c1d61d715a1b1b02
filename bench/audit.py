"""Benchmark of the audit log at scale: chain verification rate and export peak memory, against their goals.

    .venv/bin/python bench/audit.py [--events 1000000] [--database-url postgresql://…/drpanel_audit_bench] [--reuse]

It fills a dedicated database (its name must end in ``_bench``: the audit table is emptied
first) with N events through COPY, hashes computed in Python exactly as ``audit_record``
computes them, plus one signed checkpoint. Then, each next to the raw tool doing the
nearest thing, in the same run:

- verification — ``verify_chain()`` (recompute every hash, follow every link, match the
  checkpoint) against reading the same rows with ``COPY … TO STDOUT`` and nothing else.
  Goal: ≥ 100 000 events/s.
- export — ``manage.py audit_export --format jsonl`` and ``--format csv`` in a child
  process (wall time, peak RSS from wait4) against ``pg_dump --table`` of the audit table.
  Goal: peak RSS < 100 MiB.
- offline verification of that JSON Lines export with ``compliance/verify_export.py``.

Not a test: numbers depend on the machine and its load; the lead re-runs all benchmarks together.
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERIFY_GOAL = 100_000  # events/s
EXPORT_GOAL_MIB = 100
ACTIONS = [("auth.login", "auth.user"), ("backup.started", "backups.artifact"),
           ("backup.succeeded", "backups.artifact"), ("verification.started", "restores.verification"),
           ("restore.requested", "restores.restorerun"), ("restore.approved", "restores.restorerun"),
           ("access.denied", ""), ("checklist.ticked", "compliance.check")]
USERS = [(n, name) for n, name in enumerate(["operator", "manager", "auditor", "admin", "ops-2", "ops-3"], start=2)]


def setup_django(database_url: str, checkpoint_dir: Path) -> None:
    os.environ.update({"DATABASE_URL": database_url, "DRPANEL_SERVICES": "external", "LOG_LEVEL": "WARNING",
                       "DRPANEL_AUDIT_CHECKPOINT_DIR": str(checkpoint_dir),
                       "DJANGO_SETTINGS_MODULE": "drpanel.settings"})
    from drpanel import runtime

    runtime.prepare(start=False)
    runtime.ensure_database(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def generated_rows(count: int):
    """Rows for COPY, chained and hashed with the writer's own encoding."""
    from compliance.audit import GENESIS_HASH, canonical_time, compute_hash

    rng = random.Random(1729)
    start = datetime.now(UTC) - timedelta(days=365)
    prev_hash = GENESIS_HASH
    for seq in range(1, count + 1):
        action, object_type = ACTIONS[rng.randrange(len(ACTIONS))]
        actor_id, actor = USERS[rng.randrange(len(USERS))]
        occurred_at = start + timedelta(microseconds=seq * 31_536_000 + rng.randrange(1000))
        details = {"path": f"/artifacts/{seq % 5000}/verify", "method": "POST", "bytes": rng.randrange(10**9),
                   "level": rng.choice(["checksum", "decrypt", "structure", "restore-test"]), "ratio": rng.random()}
        fields = {
            "v": 1, "seq": seq, "occurred_at": canonical_time(occurred_at), "actor_id": actor_id,
            "actor_username": actor, "client_ip": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "request_id": f"{seq:032x}",
            "action": action, "object_type": object_type, "object_id": str(seq % 5000) if object_type else "",
            "object_repr": f"chatbotdysa full #{seq % 5000}" if object_type else "", "outcome": "success",
            "details": details, "prev_hash": prev_hash,
        }
        event_hash = compute_hash(fields)
        yield (seq, occurred_at, actor_id, actor, fields["client_ip"], fields["user_agent"], fields["request_id"],
               action, object_type, fields["object_id"], fields["object_repr"], "success",
               json.dumps(details, separators=(",", ":")), prev_hash, event_hash)
        prev_hash = event_hash


def fill(count: int) -> float:
    from django.db import connection, transaction

    from compliance.audit.checkpoints import checkpoint_write
    from compliance.audit.models import TRUNCATE_TRIGGER

    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        # The trigger refuses TRUNCATE in every replication mode; the bench database's owner disables
        # it for this transaction only (enabled again, ALWAYS, before the commit).
        cursor.execute(f"ALTER TABLE compliance_auditevent DISABLE TRIGGER {TRUNCATE_TRIGGER}")
        cursor.execute("TRUNCATE compliance_auditevent RESTART IDENTITY")
        cursor.execute(f"ALTER TABLE compliance_auditevent ENABLE ALWAYS TRIGGER {TRUNCATE_TRIGGER}")
        columns = ("seq, occurred_at, actor_id, actor_username, client_ip, user_agent, request_id, action, "
                   "object_type, object_id, object_repr, outcome, details, prev_hash, hash")
        with cursor.cursor.copy(f"COPY compliance_auditevent ({columns}) FROM STDIN") as copy:
            for row in generated_rows(count):
                copy.write_row(row)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE compliance_auditevent")
    checkpoint_write(force=True)
    return time.monotonic() - started


def raw_read_seconds() -> float:
    """The floor: PostgreSQL sending the rows verification reads, read and thrown away."""
    from django.db import connection

    from compliance.audit.query import ROW_SQL, TABLE

    started = time.monotonic()
    sql = f"COPY (SELECT {ROW_SQL} FROM {TABLE} ORDER BY seq) TO STDOUT"  # noqa: S608 - fixed text
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for _ in copy:
            pass
    return time.monotonic() - started


def verify_processes(count: int) -> int:
    from compliance.audit.verify import PARALLEL_FROM

    return min(os.cpu_count() or 1, 4) if count >= PARALLEL_FROM else 1


def export_heap_mib() -> float:
    """Peak of Python allocations while the web/API export streams every event to nowhere."""
    import tracemalloc

    from compliance.audit.export import audit_export_start, jsonl_chunks
    from compliance.audit.query import AuditFilter

    plan = audit_export_start(actor=None, format="jsonl", flt=AuditFilter(), via="bench")
    tracemalloc.start()
    for _ in jsonl_chunks(plan):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


GNU_TIME = Path("/usr/bin/time")


def child(args: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, float, int]:
    """Run a process; its wall time (s), peak RSS (MiB) and exit status.

    A child forked from this (large) process would report at least this process's RSS:
    Linux keeps the pre-exec high-water mark in ru_maxrss. GNU time forks it from a
    2 MB process instead, so ``%M`` is the child's own peak.
    """
    report = Path(tempfile.mktemp(prefix="audit-bench-time-"))  # noqa: S306 - written by /usr/bin/time only
    wrapped = [str(GNU_TIME), "-f", "%M", "-o", str(report), *args] if GNU_TIME.exists() else args
    started = time.monotonic()
    proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.monotonic() - started
    if proc.returncode:
        sys.stderr.write(proc.stderr.decode())
    if GNU_TIME.exists():
        peak = int(report.read_text().split()[-1]) / 1024
        report.unlink()
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # an upper bound
    return seconds, peak, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/drpanel_audit_bench"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep the events already there if there are at least --events of them")
    parser.add_argument("--verify-only", action="store_true", help="measure verification only")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of verification and raw COPY (≥ 3)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3: a figure is the median of at least three runs")
    if not args.database_url.rsplit("/", 1)[-1].split("?")[0].endswith("_bench"):
        parser.error("the database name must end in _bench: its audit table is emptied")

    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    setup_django(args.database_url, work / "checkpoints")
    from django.db import connection

    from compliance.audit.signing import current_public_key, public_pem
    from compliance.audit.verify import verify_chain
    from compliance.models import AuditEvent

    n = args.events
    print(f"audit bench: {n:,} events, database {args.database_url.rsplit('/', 1)[-1]}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.reuse and AuditEvent.objects.count() >= n:
        from compliance.audit.checkpoints import checkpoint_write

        n = AuditEvent.objects.count()
        checkpoint_write(force=True)
        print(f"  reusing the {n:,} events already there")
    else:
        seconds = fill(n)
        print(f"  filled by COPY in {seconds:.1f} s ({n / seconds:,.0f} events/s, hashes computed in Python)")

    from bench.protocol import report
    from bench.stats import Conditions, interleaved, summary

    processes = verify_processes(n)
    if processes > 1:
        single = verify_chain(processes=1)
        assert single.ok and single.count == n, single.summary()
        print(f"verification, 1 process: {single.seconds:.2f} s = {n / single.seconds:,.0f} events/s (for reference)")

    def verify_rate() -> float:
        result = verify_chain(processes=processes)
        assert result.ok and result.count == n, result.summary()
        return n / result.seconds

    # Raw COPY and verification in turn (A B, B A, A B): load drifts alike on both.
    with Conditions() as conditions:
        samples = interleaved({"raw": lambda: n / raw_read_seconds(), "verify": verify_rate}, runs=args.runs)
    rates, raw_rates = summary(samples["verify"]), summary(samples["raw"])
    rate = rates.median
    print(f"raw tool: COPY of the same rows to nowhere, {raw_rates.text(' rows/s')}")
    print(f"verification, {processes} process(es): {rates.text(' events/s')} "
          f"(goal ≥ {VERIFY_GOAL:,}: {'met' if rate >= VERIFY_GOAL else 'NOT met'})")
    print(f"  {conditions.text()}")
    report("audit chain verification rate", ours=rate, raw=raw_rates.median, unit="events/s",
           ratio=rate / raw_rates.median, goal=f"≥ {VERIFY_GOAL:,} events/s", met=rate >= VERIFY_GOAL,
           scale=f"{n:,} events", note=f"{processes} process(es); raw = COPY of the same rows to nowhere",
           spread=rates, conditions=conditions)

    if args.verify_only:
        shutil.rmtree(work)
        return 0
    heap = export_heap_mib()
    print(f"export through the HTTP generator (JSON Lines), in this process: Python heap peak {heap:.1f} MiB "
          "(tracemalloc; flat in N)")

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "drpanel.settings"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    jsonl = work / "export.jsonl"
    outcome = {}
    for fmt, path in (("jsonl", jsonl), ("csv", work / "export.csv")):
        seconds, rss, status = child([*manage, "audit_export", "--format", fmt, "--output", str(path)], env)
        assert status == 0
        outcome[fmt] = (seconds, rss, path.stat().st_size)
    params = dict(connection.settings_dict)
    dump = work / "dump.sql"
    pg_env = {**os.environ, "PGPASSWORD": params.get("PASSWORD") or ""}
    pg_args = ["pg_dump", "--data-only", "--table=compliance_auditevent", "-f", str(dump), "-d", params["NAME"]]
    for flag, key in (("-h", "HOST"), ("-p", "PORT"), ("-U", "USER")):
        if params.get(key):
            pg_args += [flag, str(params[key])]
    dump_seconds, dump_rss, status = child(pg_args, pg_env)
    assert status == 0
    for fmt, (seconds, rss, size) in outcome.items():
        print(f"export {fmt:5}: {seconds:.1f} s, {size / 2**20:,.0f} MiB written, peak RSS {rss:.0f} MiB "
              f"(goal < {EXPORT_GOAL_MIB} MiB: {'met' if rss < EXPORT_GOAL_MIB else 'NOT met'}); "
              f"pg_dump --table: {dump_seconds:.1f} s, peak RSS {dump_rss:.0f} MiB; "
              f"time × {seconds / dump_seconds:.1f}")
        report(f"audit export ({fmt}) peak memory", ours=rss, raw=dump_rss, unit="MiB",
               goal=f"peak RSS < {EXPORT_GOAL_MIB} MiB", met=rss < EXPORT_GOAL_MIB, scale=f"{n:,} events",
               note=f"{seconds:.1f} s vs pg_dump --table {dump_seconds:.1f} s; raw = pg_dump's peak RSS")

    key = work / "public.pem"
    key.write_text(public_pem(current_public_key()))
    seconds, rss, status = child([sys.executable, str(ROOT / "compliance" / "verify_export.py"), str(jsonl),
                                  "--public-key", str(key)], {"PATH": os.environ["PATH"]})
    assert status == 0, "the export did not verify offline"
    print(f"offline verification of the JSON Lines export: {seconds:.1f} s = {n / seconds:,.0f} events/s, "
          f"peak RSS {rss:.0f} MiB")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this benchmark process, generation included: peak RSS {own:.0f} MiB)")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
