"""`make demo` and a benchmark run side by side on one Redis database without taking each other's jobs.

Both reported failures came from this pairing: with the demo running, the benchmark hung (the demo's idle
workers took its jobs), and a restore requested in the demo was failed because a benchmark's worker took
it. Here the demo is ``manage.py serve --demo`` (what ``make demo`` runs: web, two workers, the scheduler,
the demo's own PostgreSQL, Barman and moto's S3), on its own panel database; the benchmark is
``bench/jobs.py`` (what ``make bench`` runs for the job path: its own panel database, its own worker),
on the same Redis database. While the benchmark's worker is up, the demo is asked for a verification,
which the demo's workers must run. Nothing is mocked.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from drpanel import runtime
from tests.notify_helpers import free_port
from tests.support import ROOT, wait_for, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REQUESTS = 5
# What this test run's processes carry that a panel started by hand would not.
TEST_ONLY = ("DRPANEL_INSTALLATION_ID", "DRPANEL_TEST_INSTALLATION_DERIVED", "DRPANEL_AUDIT_CHECKPOINT_DIR",
             "DRPANEL_DEMO_S3_ENDPOINT", "DJANGO_ALLOW_ASYNC_UNSAFE", "DRPANEL_VAR_DIR")
JOB_LINE = re.compile(r": (drp-[a-z0-9_-]+):(default|backup|verify|restore): ([\w.]+)\(")


def panel_env(database: str, **extra) -> dict:
    env = worker_env()
    for name in TEST_ONLY:
        env.pop(name, None)
    env["DATABASE_URL"] = runtime.with_database_name(os.environ["DATABASE_URL"], database)
    env.update(extra)
    return env


def drop(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def jobs_taken(text: str) -> list[tuple[str, str, str]]:
    """(queue prefix, queue, function) of every job a worker log says it started."""
    return JOB_LINE.findall(text)


@pytest.fixture
def side_by_side():
    """Names and directories of the demo's and the benchmark's installations; all removed afterwards."""
    base = connection.settings_dict["NAME"]
    demo_db, bench_db = f"{base}_demo", f"{base}_bench"
    for name in (demo_db, bench_db, f"{bench_db}_src"):
        drop(name)
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{demo_db}"')
    # The demo's PostgreSQL runs as the postgres user, which pytest's tmp_path is closed to.
    var = Path(tempfile.mkdtemp(prefix="drpanel-demo-bench-"))
    var.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        yield {"demo_db": demo_db, "bench_db": bench_db, "var": var, "procs": procs}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for name in (demo_db, bench_db, f"{bench_db}_src"):
            drop(name)
        shutil.rmtree(var, ignore_errors=True)


def test_the_demo_and_a_benchmark_share_a_redis_database_and_each_runs_only_its_own_jobs(side_by_side):
    var = side_by_side["var"]
    demo_log, bench_log = var / "demo.log", var / "bench.log"
    demo_env = panel_env(side_by_side["demo_db"], DRPANEL_VAR_DIR=str(var / "demo-var"))
    with open(demo_log, "wb") as out:
        demo = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "serve", "--demo", "--port",
                                 str(free_port())], env=demo_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    side_by_side["procs"].append(demo)

    def demo_output() -> str:
        return demo_log.read_text(errors="replace")

    def demo_up() -> bool:
        assert demo.poll() is None, demo_output()[-4000:]
        return demo_output().count("*** Listening on ") >= 2

    wait_for(demo_up, 300, what="the demo's web, seed and both workers")
    demo_prefix = re.search(r"\*\*\* Listening on (drp-[a-z0-9_-]+):default", demo_output())[1]

    bench_tmp = var / "bench-tmp"
    bench_tmp.mkdir()
    bench_env = panel_env(connection.settings_dict["NAME"], TMPDIR=str(bench_tmp))
    with open(bench_log, "wb") as out:
        bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / "jobs.py"), "--requests", str(REQUESTS),
                                  "--skip", "detection", "--panel-db", side_by_side["bench_db"]],
                                 env=bench_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    side_by_side["procs"].append(bench)

    def bench_output() -> str:
        return bench_log.read_text(errors="replace")

    # Its leftovers are cleared and its worker is starting: from here the two installations' workers
    # listen on one Redis database.
    wait_for(lambda: "cleared" in bench_output() or bench.poll() is not None, 180,
             what="the benchmark to set up its installation")
    bench_prefix = "drp-" + re.search(r"installation (bench-[a-z0-9_-]+):", bench_output())[1]
    assert bench_prefix != demo_prefix

    # The demo is asked for a verification while the benchmark's worker waits for jobs.
    ask = ("from backups.models import Artifact\n"
           "from restores.verifications import verification_request\n"
           "artifact = Artifact.objects.filter(kind='full', status='available').latest('created_at')\n"
           "print(verification_request(actor=None, artifact=artifact, level='checksum').pk)")
    asked = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", ask], env=demo_env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    run_id = asked.stdout.strip().splitlines()[-1]

    def verification_state() -> str:
        with psycopg.connect(demo_env["DATABASE_URL"], autocommit=True) as db:
            return db.execute("SELECT state || ':' || error FROM restores_verificationrun WHERE id = %s",
                              [run_id]).fetchone()[0]

    state = wait_for(lambda: (s := verification_state()).startswith(("succeeded", "failed")) and s, 180,
                     what="the demo's verification to end")
    assert state == "succeeded:", state

    try:
        bench.wait(240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the benchmark hung beside the demo:\n{bench_output()[-4000:]}")
    assert bench.returncode == 0, bench_output()[-4000:]
    assert f"click → job started, {REQUESTS} requests each" in bench_output()
    assert demo.poll() is None, demo_output()[-4000:]

    # The demo's workers started only the demo's jobs, the verification among them; had one of them taken
    # a benchmark job, it would have refused it (its database has no such run) and the benchmark would
    # have waited for it in vain.
    demo_jobs = jobs_taken(demo_output())
    assert {prefix for prefix, _, _ in demo_jobs} == {demo_prefix}, demo_jobs
    assert f"{demo_prefix}:verify: restores.jobs.verification_run_job('{run_id}')" in demo_output()
    assert bench_prefix not in demo_output()
    assert "RunNotFound" not in demo_output() and "failed, not run" not in demo_output()
    # The benchmark's own runs were all taken, by its own worker, against its own database.
    with psycopg.connect(runtime.with_database_name(os.environ["DATABASE_URL"], side_by_side["bench_db"]),
                         autocommit=True) as db:
        states = db.execute("SELECT state, count(*) FROM backups_backuprun GROUP BY state").fetchall()
    assert states == [("succeeded", REQUESTS)], states
