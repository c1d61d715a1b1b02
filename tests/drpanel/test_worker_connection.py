"""A work horse starts its job on a database connection its worker opened while idle, never on a shared one.

Opening a connection (a new PostgreSQL backend) was a large part of "click → job started". The
idle worker now keeps one fresh connection for its next horse and lets go of it at the fork
(``drpanel.worker``). These tests run real workers against the test database and read the
sessions from ``pg_stat_activity``.
"""

import uuid

import pytest
from django.db import connection

from drpanel import queues
from tests.support import rq_workers, wait_for

pytestmark = pytest.mark.slow

SESSION = "tests.drpanel.queue_jobs.session"


def server_now() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        return float(cursor.fetchone()[0])


def run_session_job(redis_conn, key: str) -> tuple[int, float]:
    """Queue the job that reports its session; wait for its line; (backend pid, session start)."""
    before = redis_conn.llen(key)
    queues.enqueue(SESSION, key, queue="default", timeout=60)
    wait_for(lambda: redis_conn.llen(key) > before, 60, "the session job to report")
    pid, started = redis_conn.lindex(key, -1).decode().split("|")
    return int(pid), float(started)


def sessions_alive(pids) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
        return {row[0] for row in cursor.fetchall()}


def other_sessions() -> set[int]:
    """Sessions on the test database other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_each_horse_runs_on_a_connection_opened_before_its_job_and_used_by_no_one_else(redis_conn):
    key = f"test-sessions-{uuid.uuid4().hex}"
    with rq_workers(["default"]):
        first_pid, _ = run_session_job(redis_conn, key)
        # The worker, idle again, opens the next horse's connection; the job is queued only after it did.
        wait_for(lambda: other_sessions() - {first_pid}, 30, "the idle worker to open its next connection")
        queued_at = server_now()
        second_pid, second_started = run_session_job(redis_conn, key)
        third_pid, _ = run_session_job(redis_conn, key)
        assert second_started < queued_at, "the horse's session was opened by the idle worker, before the job"
        assert len({first_pid, second_pid, third_pid}) == 3, "a connection goes to one horse only"
        # A horse's session ends with it: nothing is left open on the server for a finished job.
        wait_for(lambda: not sessions_alive({first_pid, second_pid}), 30, "the finished horses' sessions to end")
    assert not other_sessions() & {third_pid}


@pytest.mark.django_db(transaction=True)
def test_a_horse_whose_inherited_connection_was_killed_connects_again(redis_conn):
    key = f"test-sessions-{uuid.uuid4().hex}"
    with rq_workers(["default"]):
        run_session_job(redis_conn, key)
        spares = wait_for(other_sessions, 30, "the idle worker to open its next connection")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                           [list(spares)])
        wait_for(lambda: not sessions_alive(spares), 30, "the worker's connection to be terminated")
        killed_at = server_now()
        pid, started = run_session_job(redis_conn, key)
    assert pid not in spares
    assert started >= killed_at, "the horse found its inherited connection dead and opened a new one"


def test_a_horse_inherits_the_workers_start_up_heap_frozen_so_its_collector_walks_only_what_its_job_made(redis_conn):
    key = f"test-collector-{uuid.uuid4().hex}"
    with rq_workers(["default"]):
        queues.enqueue("tests.drpanel.queue_jobs.collector", key, queue="default", timeout=60)
        wait_for(lambda: redis_conn.llen(key) > 0, 60, "the collector job to report")
    frozen, tracked = (int(n) for n in redis_conn.lindex(key, 0).decode().split("|"))
    # Django, the panel and every job module: far more than a job makes before it reports.
    assert frozen > 100_000, frozen
    assert tracked < frozen / 10, (frozen, tracked)
