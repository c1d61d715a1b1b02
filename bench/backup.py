#!/usr/bin/env python
"""Benchmarks of the backup catalog, each against the raw tool in the same run.

1. Full backup through the panel's real path (``backups.runs.backup_run_execute``: snapshot,
   row counts, ``pg_dump -Fc`` streamed through hashing + AES-256-GCM into a local primary
   location, manifest) against ``pg_dump -Fc -f file`` of the same database — on a
   ``pgbench -i -s SCALE`` database and on a realistic one (text, jsonb, indexes) of about
   ``--realistic-mb`` MB. Goal: ≤ 1.05×.
2. "decrypt" verification of the artifact (every chunk authenticated, stored and plaintext
   SHA-256) against ``openssl dgst -sha256`` of the same file (the restore issue's goal: ≥ 0.8×
   the throughput).
3. The artifact list page (first page, default sort) with 100 and with 100,000 artifacts in the
   catalog. Goal: ≤ 1.5×.

Everything runs in databases of its own on the panel's PostgreSQL server (``DATABASE_URL`` or the
local default): a panel database ``--panel-db`` (migrated here) and the two source databases,
which are kept between runs (``--rebuild`` makes them again). Usage::

    .venv/bin/python bench/backup.py --quick          # small scale, to validate (≈ 1 min)
    .venv/bin/python bench/backup.py                  # pgbench -s 50 and ≈ 1.5 GB (long)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REALISTIC_SQL = """
CREATE TABLE customers (id bigserial PRIMARY KEY, email text NOT NULL, name text NOT NULL, address text,
                        created_at timestamptz NOT NULL, profile jsonb NOT NULL);
CREATE TABLE events (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, kind text NOT NULL,
                     at timestamptz NOT NULL, payload jsonb NOT NULL, note text);
INSERT INTO customers (email, name, address, created_at, profile)
SELECT 'c' || g || '@example.com', initcap(md5(g::text)), g || ' ' || md5((g * 3)::text) || ' Avenue',
       now() - (g % 1000) * interval '1 hour',
       jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array(md5(g::text), g % 7), 'bio', repeat(md5(g::text), 2))
FROM generate_series(1, {customers}) g;
INSERT INTO events (customer_id, kind, at, payload, note)
SELECT 1 + g % {customers}, (ARRAY['view','order','chat','refund'])[1 + g % 4],
       now() - (g % 100000) * interval '1 minute',
       jsonb_build_object('sku', 'SKU-' || (g % 5000), 'qty', 1 + g % 4, 'price', (g % 300) * 1.25,
                          'session', md5((g * 11)::text)),
       CASE WHEN g % 3 = 0 THEN repeat(md5(g::text) || ' ', 1 + g % 4) END
FROM generate_series(1, {events}) g;
-- Attachments: 1 KiB of random bytes each, the part of a real database gzip cannot shrink much.
CREATE TABLE attachments (id bigserial PRIMARY KEY, event_id bigint NOT NULL, content bytea NOT NULL);
INSERT INTO attachments (event_id, content)
SELECT g * 7, decode(string_agg(md5(random()::text || k), ''), 'hex')
FROM generate_series(1, {attachments}) g, generate_series(1, 64) k GROUP BY g;
CREATE INDEX events_customer ON events (customer_id, at);
CREATE INDEX events_payload ON events USING gin (payload jsonb_path_ops);
CREATE INDEX customers_email ON customers (email);
ANALYZE;
"""


def log(message: str) -> None:
    print(message, flush=True)


def prepare_services(panel_db: str) -> str:
    from drpanel import runtime

    plan = runtime.prepare()
    panel_url = runtime.with_database_name(plan.database_url, panel_db)
    runtime.ensure_database(panel_url)
    os.environ["DATABASE_URL"] = panel_url
    # Its own queues (bench/installation.py): a running demo's workers never take its jobs.
    from bench.installation import use_own_installation

    use_own_installation(panel_db)
    return plan.database_url


def database_exists(server_url: str, name: str) -> bool:
    import psycopg

    from drpanel import runtime

    with psycopg.connect(runtime.with_database_name(server_url, "postgres"), autocommit=True) as admin:
        return bool(admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def recreate(server_url: str, name: str) -> str:
    import psycopg

    from drpanel import runtime

    with psycopg.connect(runtime.with_database_name(server_url, "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return runtime.with_database_name(server_url, name)


def build_pgbench(server_url: str, name: str, scale: int, rebuild: bool) -> str:
    from backups import pgtools
    from drpanel import runtime

    url = runtime.with_database_name(server_url, name)
    if database_exists(server_url, name) and not rebuild:
        return url
    recreate(server_url, name)
    started = time.monotonic()
    subprocess.run(["pgbench", "-i", "-s", str(scale), "-q"], env=pgtools.libpq_env(url), check=True,
                   capture_output=True)
    log(f"  built {name} (pgbench -i -s {scale}) in {time.monotonic() - started:.0f} s")
    return url


def build_realistic(server_url: str, name: str, megabytes: int, rebuild: bool) -> str:
    import psycopg

    from drpanel import runtime

    url = runtime.with_database_name(server_url, name)
    if database_exists(server_url, name) and not rebuild:
        return url
    recreate(server_url, name)
    started = time.monotonic()
    events = max(1000, megabytes * 2300)
    customers = max(100, events // 20)
    attachments = max(100, megabytes * 80)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in REALISTIC_SQL.format(customers=customers, events=events,
                                              attachments=attachments).split(";\n"):
            if statement.strip():
                conn.execute(statement)
    log(f"  built {name} ({events} events, {customers} customers, {attachments} random attachments) in "
        f"{time.monotonic() - started:.0f} s")
    return url


def database_size(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children) user + system CPU seconds so far."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def raw_dump(url: str, tool: str, out_dir: Path, compression: int | None = None) -> tuple[float, int]:
    """``pg_dump -Fc -f`` at its default compression, or at ``compression``: (seconds, bytes)."""
    from backups import pgtools

    target = out_dir / "raw.pgc"
    level = [] if compression is None else [f"--compress={compression}"]
    started = time.monotonic()
    subprocess.run([tool, "-Fc", *level, "-f", str(target)], env=pgtools.libpq_env(url), check=True)
    elapsed = time.monotonic() - started
    size = target.stat().st_size
    target.unlink()
    return elapsed, size


def panel_backup(system, location) -> tuple[float, object]:
    from backups.models import BackupRun
    from backups.runs import backup_run_execute

    run = BackupRun.objects.create(system=system, kind="full", trigger=BackupRun.Trigger.MANUAL)
    cpu_before = cpu_seconds()
    started = time.monotonic()
    run = backup_run_execute(run.id)
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds()
    if run.state != BackupRun.State.SUCCEEDED:
        raise SystemExit(f"the panel's backup failed: {run.error}")
    panel_cpu_seconds.append((cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]))
    return elapsed, run.artifact


panel_cpu_seconds: list = []


def forget_automatic_verifications(system) -> None:
    """Each measured backup queued a decrypt verification of its artifact (the panel's real path):
    drop those jobs from the queue and their rows, so no worker meets them later."""
    from rq.job import Job

    from drpanel import queues
    from restores.models import VerificationRun

    runs = VerificationRun.objects.filter(artifact__system=system)
    connection = queues.get_connection("verify")
    for job_id in runs.exclude(job_id="").values_list("job_id", flat=True):
        for job in Job.fetch_many([job_id], connection=connection):
            if job is not None:
                job.delete()
    runs.delete()


def verify_vs_openssl(artifact, location) -> tuple[float, float, float]:
    """(openssl dgst, our decrypt-level pass with the plaintext SHA-256, and without it)."""
    from backups import formats
    from backups.keys import get_keyring
    from bench.stats import timed

    path = Path(location.path) / artifact.storage_key
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache for both
    # Each side is repeated until it has run for a second: one pass over a small artifact is
    # a few hundredths of a second, too short to mean anything on a shared machine.
    openssl, _ = timed(lambda: subprocess.run(["openssl", "dgst", "-sha256", str(path)], capture_output=True,
                                              check=True))
    timings = []
    for hash_plaintext in (True, False):
        def verify(hash_plaintext=hash_plaintext):
            with open(path, "rb", buffering=0) as src:
                result = formats.verify_stream(src, artifact_id=artifact.id, keyring=get_keyring(),
                                               hash_plaintext=hash_plaintext)
            assert result.stored_sha256 == artifact.sha256
            assert not hash_plaintext or result.plaintext_sha256 == artifact.plaintext_sha256

        timings.append(timed(verify)[0])
    return openssl, timings[0], timings[1]


# The parts of a full backup beyond pg_dump that the profile names (docs/benchmarks.md).
PROFILED = ("backup_run_execute", "full_backup", "_finish_artifact", "write_manifest", "audit_record",
            "health_recompute", "hooks.py", "enqueue", "fsync", "copy_artifact", "table_counts")


def profile_backup(label: str) -> None:
    """One more panel backup of ``label`` under cProfile: where the panel's own process spends its time."""
    import cProfile
    import pstats

    from backups.models import StorageLocation, System

    system = System.objects.get(name=f"bench-{label}")
    location = StorageLocation.objects.get(name=f"bench-{label}")
    profiler = cProfile.Profile()
    profiler.enable()
    elapsed, artifact = panel_backup(system, location)
    profiler.disable()
    stats = pstats.Stats(profiler)
    log(f"  profile of one panel backup of {label} ({elapsed:.2f} s wall; cumulative seconds in this process):")
    rows = []
    for (filename, line, function), (_cc, calls, _tt, cumulative, _callers) in stats.stats.items():
        where = f"{Path(filename).name}:{function}"
        if str(ROOT) in filename and any(part in where for part in PROFILED):
            rows.append((cumulative, calls, f"{Path(filename).parent.name}/{Path(filename).name}:{line} {function}"))
    for cumulative, calls, where in sorted(rows, reverse=True)[:20]:
        log(f"    {cumulative:8.3f} s  {calls:5d}×  {where}")
    if not any("health_recompute" in where for _c, _n, where in rows):
        log("    (no health_recompute in the backup's process: it is queued for a worker when the run ends)")
    forget_automatic_verifications(system)
    (Path(location.path) / artifact.storage_key).unlink(missing_ok=True)


def bench_dump(label: str, url: str, repeats: int, spool: Path) -> dict:
    import psycopg

    from backups import pgtools
    from backups.models import Artifact, ArtifactCopy, BackupRun, StorageLocation, System
    from drpanel import pgbin

    env_name = f"DRPANEL_SECRET_BENCH_{label.upper()}_URL"
    os.environ[env_name] = url
    with psycopg.connect(url) as conn:
        facts = pgtools.server_facts(conn)
    tool = pgbin.find_tool("pg_dump", facts["server_major"])
    location_dir = spool / f"primary-{label}"
    location_dir.mkdir(parents=True, exist_ok=True)
    StorageLocation.objects.filter(role="primary").update(enabled=False)
    StorageLocation.objects.filter(role="offsite").update(enabled=False)
    location, _ = StorageLocation.objects.update_or_create(name=f"bench-{label}", defaults={
        "kind": "local", "role": "primary", "enabled": True, "path": str(location_dir)})
    system, _ = System.objects.update_or_create(name=f"bench-{label}", defaults={"database_ref": f"env:{env_name}"})
    from django.conf import settings

    from bench.stats import Conditions, ratios, summary

    level = settings.BACKUP_COMPRESSION
    raw_times, same_times, ours_times, verify = [], [], [], []
    raw_size = same_size = artifact = None
    conditions = Conditions().start()
    for n in range(repeats):
        # Alternate the order: the machine is shared, and load drifts.
        order = ("raw", "same", "panel") if n % 2 == 0 else ("panel", "same", "raw")
        for which in order:
            if which == "raw":
                elapsed, raw_size = raw_dump(url, tool.path, spool)
                raw_times.append(elapsed)
            elif which == "same":
                elapsed, same_size = raw_dump(url, tool.path, spool, compression=level)
                same_times.append(elapsed)
            else:
                elapsed, artifact = panel_backup(system, location)
                ours_times.append(elapsed)
        verify.append(verify_vs_openssl(artifact, location))
        log(f"  {label} run {n + 1}: pg_dump -Fc {raw_times[-1]:.2f} s, pg_dump -Fc -Z{level} {same_times[-1]:.2f} s, "
            f"panel backup {ours_times[-1]:.2f} s; "
            f"verify {verify[-1][1]:.3f} s ({verify[-1][2]:.3f} s without the plaintext hash) "
            f"vs openssl dgst {verify[-1][0]:.3f} s (each repeated to ≥ 1 s)")
        if n < repeats - 1:
            (location_dir / artifact.storage_key).unlink()
    conditions.stop()
    raw, ours = statistics.median(raw_times), statistics.median(ours_times)
    pair = ratios(ours_times, raw_times)
    same_pair = ratios(ours_times, same_times)
    pair_ratio = pair.median
    own_cpu = statistics.median(c[0] for c in panel_cpu_seconds[-repeats:])
    dump_cpu = statistics.median(c[1] for c in panel_cpu_seconds[-repeats:])
    openssl, ours_verify, ours_verify_light = (statistics.median(v[i] for v in verify) for i in (0, 1, 2))
    verify_light = summary([v[0] / v[2] for v in verify])
    result = {"label": label, "database_bytes": facts["database_size"], "pg_dump": tool.version,
              "raw_seconds": raw, "panel_seconds": ours, "ratio": ours / raw, "pair_ratio": pair_ratio,
              "pair": pair, "same_pair": same_pair, "same_seconds": statistics.median(same_times),
              "same_bytes": same_size, "level": level, "conditions": conditions, "verify_light": verify_light,
              "own_cpu": own_cpu, "dump_cpu": dump_cpu, "raw_bytes": raw_size,
              "artifact_bytes": artifact.size, "verify_seconds": ours_verify, "openssl_seconds": openssl,
              "verify_throughput_ratio": openssl / ours_verify, "verify_light_seconds": ours_verify_light,
              "verify_light_ratio": openssl / ours_verify_light}
    forget_automatic_verifications(system)
    ArtifactCopy.objects.filter(artifact__system=system).delete()
    BackupRun.objects.filter(system=system).delete()
    Artifact.objects.filter(system=system).delete()
    for path in location_dir.rglob("*"):
        if path.is_file():
            path.unlink()
    return result


# The list's catalog in SQL (``generate_series``): a million rows take a minute, where the ORM's ``bulk_create`` took
# most of an hour. Alternately full and config, a minute apart, counted back from now; each with one copy per location.
LIST_ARTIFACTS_SQL = """
    INSERT INTO backups_artifact (id, system_id, kind, format, encryption, status, source, created_at, size, sha256,
                                  plaintext_sha256, key_id, storage_key, manifest, last_verified_level,
                                  quarantine_reason)
    SELECT gen_random_uuid(), %(system)s, CASE WHEN g %% 2 = 0 THEN 'full' ELSE 'config' END, 'pg_custom',
           'drpanel-v1', 'available', 'backup', %(now)s::timestamptz - g * interval '1 minute', 10000 + g,
           repeat('a', 64), '', '', 'bench/' || g, '{}'::jsonb, '', ''
    FROM generate_series(%(first)s, %(last)s) AS g
"""
LIST_COPIES_SQL = """
    INSERT INTO backups_artifactcopy (artifact_id, location_id, key, status, size, sha256_seen, created_at)
    SELECT a.id, l.id, a.storage_key, 'ok', 1, a.sha256, a.created_at
    FROM backups_artifact a CROSS JOIN backups_storagelocation l
    WHERE a.system_id = %(system)s AND l.id = ANY(%(locations)s)
      AND NOT EXISTS (SELECT 1 FROM backups_artifactcopy c WHERE c.artifact_id = a.id)
"""
LIST_EMPTY_SQL = """
    DELETE FROM backups_artifactcopy
    WHERE artifact_id IN (SELECT id FROM backups_artifact WHERE system_id = %(system)s);
    DELETE FROM backups_artifact WHERE system_id = %(system)s
"""


def bench_list(sizes=(100, 100_000), requests: int = 20) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from backups.models import StorageLocation, System

    system, _ = System.objects.get_or_create(name="bench-list", defaults={"database_ref": "env:DRPANEL_SECRET_UNUSED"})
    locations = [StorageLocation.objects.get_or_create(name=f"bench-list-{role}", defaults={
        "kind": "local", "role": role, "enabled": False, "path": "/nonexistent"})[0] for role in ("primary", "offsite")]
    user, _ = get_user_model().objects.get_or_create(username="bench-auditor")
    user.groups.add(Group.objects.get(name="Auditor"))
    client = Client()
    client.force_login(user)
    params = {"system": system.pk, "locations": [loc.pk for loc in locations], "now": timezone.now()}
    with connection.cursor() as cursor:
        cursor.execute(LIST_EMPTY_SQL, params)
        # An earlier run's deleted rows, not yet vacuumed, would slow the small page down (500 ms measured after a
        # run at a million artifacts, against 35 ms): the reference must be the page itself.
        cursor.execute("VACUUM ANALYZE backups_artifact, backups_artifactcopy")
    timings = {}
    made = 0
    for size in sizes:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(LIST_ARTIFACTS_SQL, {**params, "first": made, "last": size - 1})
            cursor.execute(LIST_COPIES_SQL, params)
            cursor.execute("ANALYZE backups_artifact; ANALYZE backups_artifactcopy")
        log(f"  {size - made} artifacts and their copies written in {time.perf_counter() - started:.1f} s")
        made = size
        for _ in range(3):
            client.get("/artifacts/")
        samples = []
        # At least ``requests`` of them, and at least a second of them.
        while len(samples) < requests or sum(samples) < 1.0:
            started = time.perf_counter()
            response = client.get("/artifacts/")
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        timings[size] = statistics.median(samples)
        log(f"  artifact list with {size} artifacts: {timings[size] * 1000:.1f} ms (median of {len(samples)})")
    with connection.cursor() as cursor:
        cursor.execute(LIST_EMPTY_SQL, params)
    small, large = sizes
    return {"small": small, "large": large, "small_ms": timings[small] * 1000, "large_ms": timings[large] * 1000,
            "ratio": timings[large] / timings[small]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scale (pgbench -s 2, 40 MB, 10k artifacts)")
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (default 50)")
    parser.add_argument("--realistic-mb", type=int, default=1500, help="size of the realistic database (MB)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per database (median is reported)")
    parser.add_argument("--list-size", type=int, default=100_000)
    parser.add_argument("--skip", action="append", default=[], choices=["pgbench", "realistic", "list"])
    parser.add_argument("--panel-db", default="drpanel_bench")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the source databases")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more panel backup of the last database (cProfile, the panel's code)")
    args = parser.parse_args()
    if args.quick:
        args.scale, args.realistic_mb, args.list_size = 2, 40, 10_000
    repeats = args.repeats or 5
    suffix = "_quick" if args.quick else ""

    server_url = prepare_services(args.panel_db)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    from bench.installation import clear_leftovers

    cleared = clear_leftovers()
    log(f"installation {os.environ['DRPANEL_INSTALLATION_ID']}: cleared {cleared['jobs']} job(s) and "
        f"{cleared['workers']} worker(s) left by an earlier run")
    log(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    results = []
    with tempfile.TemporaryDirectory(prefix="drpanel-bench-", dir=os.environ.get("TMPDIR")) as spool:
        spool = Path(spool)
        if "pgbench" not in args.skip:
            log(f"pgbench -i -s {args.scale}:")
            url = build_pgbench(server_url, f"{args.panel_db}_pgbench_s{args.scale}", args.scale, args.rebuild)
            results.append(bench_dump(f"pgbench{args.scale}", url, repeats, spool))
        if "realistic" not in args.skip:
            log(f"realistic ≈ {args.realistic_mb} MB:")
            # v2: with random attachments (an older database of the same size lacks them).
            name = f"{args.panel_db}_realistic_v2_{args.realistic_mb}mb{suffix}"
            url = build_realistic(server_url, name, args.realistic_mb, args.rebuild)
            results.append(bench_dump(f"realistic{args.realistic_mb}", url, repeats, spool))
        if args.profile and results:
            profile_backup(results[-1]["label"])
    listing = None if "list" in args.skip else bench_list(sizes=(100, args.list_size))
    log("")
    log("results (median; the machine is shared, so repeat before trusting a small difference):")
    for r in results:
        log(f"  {r['label']}: database {r['database_bytes'] / 1e6:.0f} MB, dump {r['raw_bytes'] / 1e6:.0f} MB, "
            f"artifact {r['artifact_bytes'] / 1e6:.0f} MB")
        log(f"    full backup {r['panel_seconds']:.2f} s vs pg_dump -Fc -f {r['raw_seconds']:.2f} s "
            f"→ per-run ratio {r['pair'].text('×')} (goal ≤ 1.05×) "
            f"{'OK' if r['pair_ratio'] <= 1.05 else 'MISSED'}")
        log(f"    at the panel's compression (-Z{r['level']}): pg_dump {r['same_seconds']:.2f} s, "
            f"{r['same_bytes'] / 1e6:.0f} MB → per-run ratio {r['same_pair'].text('×')}")
        log(f"    {r['conditions'].text()}")
        log(f"    CPU of the panel's own process {r['own_cpu']:.2f} s (hashing, encryption, row counts, catalog) "
            f"beside pg_dump's {r['dump_cpu']:.2f} s")
        log(f"    decrypt-level verify {r['verify_seconds']:.2f} s vs openssl dgst -sha256 "
            f"{r['openssl_seconds']:.2f} s "
            f"→ {r['verify_throughput_ratio']:.2f}× its throughput (goal ≥ 0.8×) "
            f"{'OK' if r['verify_throughput_ratio'] >= 0.8 else 'MISSED'}; without the plaintext SHA-256 "
            f"{r['verify_light_seconds']:.2f} s → {r['verify_light_ratio']:.2f}×")
    if listing:
        log(f"  artifact list: {listing['small_ms']:.1f} ms at {listing['small']} vs {listing['large_ms']:.1f} ms at "
            f"{listing['large']} → {listing['ratio']:.2f}× (goal ≤ 1.5×) "
            f"{'OK' if listing['ratio'] <= 1.5 else 'MISSED'}")
    report_protocol(results, listing, repeats)


def report_protocol(results: list, listing: dict | None, repeats: int) -> None:
    """The figures as ``bench/protocol.py`` lines, for ``make bench``."""
    from bench.protocol import report

    for r in results:
        scale = f"{r['label']}: {r['database_bytes'] / 1e6:.0f} MB database, {repeats} runs"
        report(f"full backup ({r['label']}) vs pg_dump -Fc", ours=r["panel_seconds"], raw=r["raw_seconds"], unit="s",
               ratio=r["pair_ratio"], goal="ratio ≤ 1.05", met=r["pair_ratio"] <= 1.05, scale=scale,
               note=f"median of per-run ratios; the panel dumps at -Z{r['level']}, pg_dump's default is -Z6",
               spread=r["pair"], conditions=r["conditions"])
        report(f"full backup ({r['label']}) vs pg_dump -Fc -Z{r['level']} (same compression)",
               ours=r["panel_seconds"], raw=r["same_seconds"], unit="s", ratio=r["same_pair"].median,
               goal="ratio ≤ 1.05", met=r["same_pair"].median <= 1.05, scale=scale,
               note=f"raw archive {r['same_bytes'] / 1e6:.0f} MB at -Z{r['level']}, "
                    f"{r['raw_bytes'] / 1e6:.0f} MB at -Z6",
               spread=r["same_pair"], conditions=r["conditions"])
        report(f"decrypt verify ({r['label']}) vs openssl dgst -sha256", ours=r["verify_light_seconds"],
               raw=r["openssl_seconds"], unit="s", ratio=r["verify_light_ratio"],
               goal="throughput ≥ 0.8× openssl", met=r["verify_light_ratio"] >= 0.8,
               scale=f"{r['artifact_bytes'] / 1e6:.0f} MB artifact",
               note=f"ratio = openssl time / ours, each repeated to ≥ 1 s; with the plaintext SHA-256 too: "
                    f"{r['verify_throughput_ratio']:.2f}×", spread=r["verify_light"], conditions=r["conditions"])
    if listing:
        report(f"artifact list, {listing['large']:,} vs {listing['small']} artifacts", ours=listing["large_ms"],
               raw=listing["small_ms"], unit="ms", ratio=listing["ratio"], goal="ratio ≤ 1.5",
               met=listing["ratio"] <= 1.5, scale=f"{listing['large']:,} artifacts",
               note="first page, median of ≥ 20 requests lasting ≥ 1 s; raw = the same page with 100 artifacts")


if __name__ == "__main__":
    main()
