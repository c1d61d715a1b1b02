"""The run runtime every kind of run shares (drpanel.runs, drpanel.queues): enqueue after commit by dotted path,
the heartbeat on its configured clock, RQ status checks, the kinds the reconciler knows, strict thresholds."""

import pytest
from django.db import transaction
from django.utils import timezone

from backups.models import BackupRun, System
from backups.offsite import OFFSITE_RUNS
from backups.runs import BACKUP_RUNS
from drpanel import queues, runs
from restores import reliability
from restores.execution import RESTORE_RUNS
from restores.jobs import restore_job_failed
from restores.verifications import VERIFICATION_RUNS
from tests.drpanel.test_settings import manage
from tests.support import wait_for


def test_a_job_is_enqueued_by_dotted_path_only_once_the_transaction_commits(transactional_db, redis_conn):
    seen = []
    with transaction.atomic():
        queues.enqueue_on_commit("drpanel.jobs.ping", "x", queue="default", timeout=90,
                                 on_failure="restores.jobs.restore_job_failed", then=seen.append)
        assert queues.get_queue("default").count == 0, "nothing is queued before the commit"
    [job] = seen
    assert queues.get_queue("default").job_ids == [job.id]
    assert job.func_name == "drpanel.jobs.ping" and job.args == ("x",) and job.timeout == 90
    assert job.failure_callback is restore_job_failed


def test_a_rolled_back_transaction_enqueues_nothing(transactional_db, redis_conn):
    with pytest.raises(RuntimeError), transaction.atomic():
        queues.enqueue_on_commit("drpanel.jobs.ping", "x", queue="default", timeout=90)
        raise RuntimeError("the caller's transaction fails")
    assert queues.get_queue("default").count == 0


def test_the_rq_status_of_a_job_is_read_and_a_missing_one_says_so(transactional_db, redis_conn):
    assert runs.job_status("no-such-job", "default") == "missing"
    assert runs.job_status("", "default") == "missing"
    job = queues.enqueue("drpanel.jobs.ping", "x", queue="default", timeout=60)
    assert runs.job_status(job.id, "default") == "queued"


def test_the_heartbeat_stamps_the_row_on_its_configured_clock(transactional_db, settings):
    settings.HEARTBEAT_SECONDS = 1
    system = System.objects.create(name="heartbeat", database_ref="env:DRPANEL_TEST_SOURCE_URL")
    run = BackupRun.objects.create(system=system, kind="full", state=BackupRun.State.RUNNING)
    before = timezone.now()
    with runs.Heartbeat(run) as beat:
        assert beat.interval == 1
        wait_for(lambda: (BackupRun.objects.get(pk=run.pk).heartbeat_at or before) > before, 4,
                 what="a heartbeat within 4 s (the default clock beats every 5 s)")


def test_every_kind_of_run_is_registered_and_the_reconciler_settles_restores_and_verifications():
    assert runs.kind("backup") is BACKUP_RUNS
    assert runs.kind("restore") is RESTORE_RUNS and runs.kind("verification") is VERIFICATION_RUNS
    # Off-site runs of continuous protection are reconciled too, by the continuous tick rather than restores'.
    assert set(runs.kinds(reconciled=True)) == {RESTORE_RUNS, VERIFICATION_RUNS, OFFSITE_RUNS}
    assert set(reliability.KINDS) == {RESTORE_RUNS, VERIFICATION_RUNS}
    assert RESTORE_RUNS.job == "restores.jobs.restore_run_job" and RESTORE_RUNS.timeout == 24 * 3600
    assert VERIFICATION_RUNS.on_failure == "restores.jobs.verification_job_failed"


def test_a_stale_threshold_not_longer_than_the_heartbeat_stops_start_up():
    result = manage("check", DRPANEL_HEARTBEAT_SECONDS="10", DRPANEL_RUN_STALE_SECONDS="10")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DRPANEL_RUN_STALE_SECONDS (10) must be longer than" in lines[0], result.stderr
