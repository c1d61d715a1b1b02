"""The cron scheduler's heartbeat: written by real ``manage.py rqcron drpanel.cron`` processes, read by
``/health`` and ``/metrics``, and alerted on when the scheduler is missing or when two run at once."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest

from compliance.alerts import SCHEDULER_DUPLICATE_KEY, SCHEDULER_MISSING_KEY, scheduler_check
from compliance.models import Alert
from drpanel import clock, cron_heartbeat, queues
from tests.support import ROOT, stop_processes, worker_env

pytest_plugins = ["tests.compliance_fixtures"]


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@contextmanager
def schedulers(count: int, tmp_path, name: str = "cron"):
    """``count`` real rq cron schedulers of this installation, beating every second."""
    procs = []
    try:
        for n in range(count):
            with open(tmp_path / f"{name}-{n}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "manage.py"), "rqcron", "drpanel.cron"],
                    env=worker_env(DRPANEL_CRON_HEARTBEAT_SECONDS=1), stdout=log, stderr=subprocess.STDOUT,
                    cwd=ROOT))
        yield procs
    finally:
        stop_processes(procs, timeout=20)


def live(redis_conn) -> int:
    return len(cron_heartbeat.read(redis_conn).live)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_one_scheduler_beats_two_are_alerted_and_a_stopped_one_is_missed(redis_conn, client, settings, tmp_path,
                                                                          django_capture_on_commit_callbacks):
    settings.CRON_HEARTBEAT_SECONDS, settings.CRON_HEARTBEAT_MISSING_SECONDS = 1, 6
    assert client.get("/health").json()["cron"] == {"status": "missing", "schedulers": 0, "age_seconds": None}
    with schedulers(1, tmp_path) as [first]:
        wait_for(lambda: live(redis_conn) == 1, 90, "the first scheduler's heartbeat")
        cron = client.get("/health").json()["cron"]
        assert cron["status"] == "ok" and cron["schedulers"] == 1 and cron["age_seconds"] <= 6
        [beat] = cron_heartbeat.read(redis_conn).live
        assert beat["pid"] == first.pid, "the beat names the scheduler that wrote it"
        with schedulers(1, tmp_path, name="second") as [second]:
            wait_for(lambda: live(redis_conn) == 2, 90, "the second scheduler's heartbeat")
            assert client.get("/health").json()["cron"]["status"] == "duplicate"
            assert scheduler_check(redis_conn) == "duplicate"
            alert = Alert.objects.get(dedup_key=SCHEDULER_DUPLICATE_KEY)
            assert alert.state == "open" and str(first.pid) in alert.message and str(second.pid) in alert.message
        # A stopped scheduler removes its own beat: one is left, and the alert resolves.
        wait_for(lambda: live(redis_conn) == 1, 30, "the second scheduler's beat removed")
        assert scheduler_check(redis_conn) == "ok"
        assert Alert.objects.get(dedup_key=SCHEDULER_DUPLICATE_KEY).state == "resolved"
        first.send_signal(signal.SIGKILL)  # dies without a word: its last beat stays and ages
        first.wait()
    wait_for(lambda: cron_heartbeat.read(redis_conn).state == "missing", 30, "the heartbeat going stale")
    assert scheduler_check(redis_conn) == "missing"
    missing = Alert.objects.get(dedup_key=SCHEDULER_MISSING_KEY)
    assert missing.severity == "critical" and missing.state == "open"


@pytest.mark.django_db(transaction=True)
def test_health_queues_the_check_when_no_scheduler_beats_at_most_once_a_minute(redis_conn, client):
    for _ in range(3):
        assert client.get("/health").json()["cron"]["status"] == "missing"
    jobs = queues.get_queue("default").jobs
    assert [job.func_name for job in jobs] == ["compliance.jobs.scheduler_check_job"]


def test_a_beat_older_than_the_threshold_is_missing_and_a_fresh_one_ok(redis_conn, panel_clock, settings):
    settings.CRON_HEARTBEAT_SECONDS, settings.CRON_HEARTBEAT_MISSING_SECONDS = 30, 180
    cron_heartbeat.beat(redis_conn, "host-a:101:aaaa", started_at=clock.now().timestamp())
    assert cron_heartbeat.read(redis_conn).state == "ok"
    panel_clock.advance(timedelta(seconds=120))
    heartbeat = cron_heartbeat.read(redis_conn)
    assert heartbeat.state == "ok" and heartbeat.live == [], "no longer beating now, but not missing yet"
    panel_clock.advance(timedelta(seconds=61))
    assert cron_heartbeat.read(redis_conn).state == "missing"
    # A restart: a new scheduler beats; the old, silent one does not count as a second.
    cron_heartbeat.beat(redis_conn, "host-a:202:bbbb", started_at=clock.now().timestamp())
    assert cron_heartbeat.read(redis_conn).state == "ok"


def test_the_heartbeat_thread_beats_only_while_rqs_own_scheduler_loop_lives(redis_conn):
    assert not cron_heartbeat.rq_loop_alive(redis_conn, pid=os.getpid())
    from rq.cron import CronScheduler

    scheduler = CronScheduler(connection=redis_conn)
    scheduler.register_birth()
    try:
        assert cron_heartbeat.rq_loop_alive(redis_conn)
    finally:
        scheduler.register_death()
    assert not cron_heartbeat.rq_loop_alive(redis_conn)
