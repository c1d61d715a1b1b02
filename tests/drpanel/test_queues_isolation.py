"""Two panels sharing one Redis database never take each other's jobs; a job without its run fails loudly.

Installation A is this test run (its settings, its test database, a real worker); installation
B is a second settings set: another database and another installation id, with its own real
worker process, on the same Redis database.
"""

import os
import signal
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.db import connection
from rq import Queue, Worker
from rq.cron import CronScheduler
from rq.job import Job

from compliance.models import AuditEvent
from drpanel import installation, queues, runtime
from restores.models import VerificationRun
from restores.verifications import VERIFICATION_RUNS
from tests.support import ROOT, rq_workers, wait_for, worker_env

pytestmark = pytest.mark.slow

REPORT = "tests.drpanel.queue_jobs.report"


@pytest.fixture
def other_installation(transactional_db, redis_conn):
    """Installation B: its own (empty) database and its own id, sharing this run's Redis database."""
    name = f"{connection.settings_dict['NAME']}_other"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    env = {"DATABASE_URL": runtime.with_database_name(os.environ["DATABASE_URL"], name),
           "DRPANEL_INSTALLATION_ID": f"{settings.INSTALLATION_ID}-other"}
    yield {"database": name, "id": env["DRPANEL_INSTALLATION_ID"], "env": env,
           "prefix": installation.queue_prefix(env["DRPANEL_INSTALLATION_ID"])}
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_worker(env: dict, queue_names: list[str], log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "rqworker", *queue_names],
                                env=worker_env(**env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def in_installation(env: dict, code: str) -> str:
    """Run ``code`` in a ``manage.py shell`` of another installation (its settings); its output."""
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code], env=worker_env(**env),
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def reports(conn, key: str) -> list[str]:
    return [line.decode() for line in conn.lrange(key, 0, -1)]


def test_queue_names_carry_the_installation_id(settings):
    prefix = f"drp-{settings.INSTALLATION_ID}:"
    assert settings.INSTALLATION_ID and prefix == settings.RQ_QUEUE_PREFIX
    assert set(settings.RQ_QUEUES) == {f"drp-{settings.INSTALLATION_ID}:{name}" for name in settings.RQ_QUEUE_NAMES}
    assert queues.get_queue("restore").name == f"drp-{settings.INSTALLATION_ID}:restore"
    assert queues.queue_names(["verify"]) == [f"drp-{settings.INSTALLATION_ID}:verify"]
    with pytest.raises(KeyError, match="no queue 'restores'"):
        queues.queue_name("restores")


def test_the_default_id_is_derived_from_the_database_and_stable():
    first = installation.derive(installation.database_identity("db.internal", "5432", "drpanel"))
    assert first == installation.derive(installation.database_identity("db.internal", "5432", "drpanel"))
    assert first != installation.derive(installation.database_identity("db.internal", "5432", "drpanel2"))
    assert installation.validate(first) is None


@pytest.mark.parametrize("value", ["Prod", "id:colon", "x" * 41])
def test_an_installation_id_that_cannot_name_a_queue_is_refused_at_start(value):
    env = {**os.environ, "DRPANEL_INSTALLATION_ID": value}
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DRPANEL_INSTALLATION_ID=" in result.stderr and "must be 1-40 characters" in result.stderr


def test_every_schedule_goes_to_this_installations_queues(redis_conn):
    scheduler = CronScheduler(connection=redis_conn)
    scheduler.load_config_from_file("drpanel.cron")
    names = {job.queue_name for job in scheduler.get_jobs()}
    assert names and all(name.startswith(settings.RQ_QUEUE_PREFIX) for name in names), names


def test_each_worker_only_runs_its_own_installations_jobs(other_installation, redis_conn, tmp_path):
    key = f"reports:{uuid.uuid4()}"
    # B's jobs go in first, through B's own settings: a worker that took foreign jobs would take them
    # before A's own.
    their_name = in_installation(other_installation["env"], (
        "from drpanel import queues\n"
        f"for n in range(3): queues.enqueue({REPORT!r}, {key!r}, f'b{{n}}', queue='default', timeout=60)\n"
        "print(queues.queue_name('default'))"))
    assert their_name == other_installation["prefix"] + "default" != queues.queue_name("default")
    theirs = Queue(their_name, connection=redis_conn)
    for n in range(3):
        queues.enqueue(REPORT, key, f"a{n}", queue="default", timeout=60)
    assert queues.depths(redis_conn)["default"] == 3, "A's depth counts A's jobs only"

    with rq_workers(["default"], count=1, log_dir=tmp_path):
        wait_for(lambda: len(reports(redis_conn, key)) >= 3, 60, "A's worker running A's three jobs")
        assert theirs.count == 3, "A's worker took none of B's jobs"
        assert sorted(r.split("|")[0] for r in reports(redis_conn, key)) == ["a0", "a1", "a2"]

        other = start_worker(other_installation["env"], [their_name],
                             tmp_path / "worker-b.log")
        try:
            wait_for(lambda: len(reports(redis_conn, key)) >= 6, 60, "B's worker running B's three jobs")
            # /health and /metrics count this installation's workers only, though Redis holds both.
            assert len(Worker.all(connection=redis_conn)) == 2
            assert len(queues.our_workers(redis_conn)) == 1
        finally:
            stop(other)

    ran = {r.split("|")[0]: r.split("|")[1:] for r in reports(redis_conn, key)}
    assert len(reports(redis_conn, key)) == 6, "every job ran exactly once"
    mine = connection.settings_dict["NAME"]
    for n in range(3):
        assert ran[f"a{n}"] == [settings.INSTALLATION_ID, mine]
        assert ran[f"b{n}"] == [other_installation["id"], other_installation["database"]]
    assert "does not have" not in (tmp_path / "worker-b.log").read_text()


def test_a_job_whose_run_is_missing_fails_loudly_and_runs_nothing(transactional_db, redis_conn, tmp_path):
    run_id = str(uuid.uuid4())  # another panel's run, or a row deleted since: this database has none
    job = queues.enqueue(VERIFICATION_RUNS.job, run_id, queue=VERIFICATION_RUNS.queue, timeout=60,
                         on_failure=VERIFICATION_RUNS.on_failure)
    before = AuditEvent.objects.count()

    with rq_workers(["verify"], count=1, log_dir=tmp_path):
        wait_for(lambda: job.get_status(refresh=True) == "failed", 60, "the job without a run failing")

    job = Job.fetch(job.id, connection=redis_conn)
    assert "RunNotFound" in job.latest_result().exc_string
    assert f"verification run {run_id}, which installation {settings.INSTALLATION_ID}" in job.latest_result().exc_string
    assert job.id in queues.get_queue("verify").failed_job_registry.get_job_ids()
    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("worker-*.log"))
    assert f"names verification run {run_id}" in log and "failed, not run" in log
    # Nothing ran: no run row appeared, no verification started; the refusal is the only event.
    assert not VerificationRun.objects.exists()
    events = list(AuditEvent.objects.order_by("seq")[before:])
    assert [(e.action, e.outcome, e.object_id) for e in events] == [("job.refused", "failure", run_id)]
    assert events[0].details["job"] == job.id and events[0].details["installation"] == settings.INSTALLATION_ID
    assert "password" not in log.lower() and settings.SECRET_KEY not in log


def test_a_worker_refuses_to_start_when_its_id_is_held_for_another_database(other_installation, redis_conn):
    queues.claim_installation()  # installation A holds its id for its database
    waiting = queues.enqueue(REPORT, "never", "x", queue="default", timeout=60)
    # Installation B copied A's id by mistake: same id, another database.
    env = worker_env(**{**other_installation["env"], "DRPANEL_INSTALLATION_ID": settings.INSTALLATION_ID})
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "rqworker", "--burst",
                             *queues.queue_names(["default"])], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"already serves installation '{settings.INSTALLATION_ID}'" in output
    assert other_installation["database"] in output and connection.settings_dict["NAME"] in output
    assert "Traceback" not in output
    assert waiting.get_status(refresh=True) == "queued" and not redis_conn.exists("never"), "nothing ran"
    assert not Worker.all(connection=redis_conn)


def test_manage_py_worker_takes_this_installations_queues_by_their_logical_names(redis_conn):
    key = f"reports:{uuid.uuid4()}"
    queues.enqueue(REPORT, key, "mine", queue="verify", timeout=60)
    Queue("drp-another:verify", connection=redis_conn).enqueue(REPORT, key, "theirs")
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "worker", "--burst", "verify"],
                            env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split("|")[0] for line in reports(redis_conn, key)] == ["mine"]
    assert Queue("drp-another:verify", connection=redis_conn).count == 1

    refused = subprocess.run([sys.executable, str(ROOT / "manage.py"), "worker", "--burst", "restores"],
                             env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "no queue 'restores'" in refused.stderr
