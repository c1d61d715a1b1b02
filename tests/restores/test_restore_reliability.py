"""Reliability with real worker processes: kill -9 mid-restore, Redis flushed, duplicate delivery, a rolled-back
enqueue, a dead work horse; and the reconciler's repairs of half-done swaps, orphans and stale files."""

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from compliance.models import AuditEvent
from drpanel import queues
from drpanel.runs import MAX_ENQUEUES
from restores import jobs, pg, reliability, requests, rollback
from restores.models import RestoreRun, SanityCheck, VerificationRun
from restores.verifications import verification_request
from tests.loop_support import copy_marker
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def state_of(run) -> str:
    return RestoreRun.objects.values_list("state", flat=True).get(pk=run.pk)


def request(actor, artifact, target, **extra) -> RestoreRun:
    return requests.restore_request(actor=actor, artifact=artifact, target=target, mode="database-only",
                                    confirm=target.name, **extra)


def live(scratch, target) -> str:
    return scratch.name(target.name.replace("-", "_"))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def ready(staging, full_artifact, redis_conn):
    """A staging target, a full artifact and a flushed Redis: the environment workers will inherit."""
    return staging, full_artifact


def test_a_restore_runs_end_to_end_on_a_real_worker(operator, ready, scratch):
    staging, artifact = ready
    with rq_workers(count=1):
        run = request(operator, artifact, staging)
        wait_for(lambda: state_of(run) in ("succeeded", "failed"), 90, what="the restore")
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert scratch.marker(live(scratch, staging)) == "restored"
    assert run.job_id and run.enqueue_count == 1


@pytest.mark.chaos
def test_kill_9_mid_restore_leaves_the_target_untouched_fails_the_run_in_time_and_a_rerun_succeeds(
        operator, ready, scratch, settings, monkeypatch):
    staging, artifact = ready
    settings.RUN_STALE_SECONDS = 20
    SanityCheck.objects.filter(target=staging).update(
        name="slow check", query="SELECT count(*) FROM users, pg_sleep(60)", expectation=">= 1")
    monkeypatch.setenv("DRPANEL_SANITY_TIMEOUT_SECONDS", "120")
    # A fresh interpreter, as production starts its workers: this kill -9 runs at the production clock.
    with rq_workers(["restore"], count=1, fresh=True) as [worker]:
        run = request(operator, artifact, staging)
        wait_for(lambda: any(s["name"] == "sanity checks" and s["state"] == "running"
                             for s in RestoreRun.objects.get(pk=run.pk).steps), 90, what="the sanity step")
        side = pg.copy_name(live(scratch, staging), run.pk, "restore")
        assert side in scratch.databases(), "the restore is half way: its side database exists"
        [horse] = children_of(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not alive(horse), 10, what="the work horse dying with its worker")
        worker.wait()
    with rq_workers(["restore", "default"], count=1):
        def failed():
            reliability.reconcile()  # what the every-minute cron job does
            return state_of(run) == "failed"

        wait_for(failed, 120, interval=2, what="the run being marked failed")
        took = time.monotonic() - killed_at
        run.refresh_from_db()
        assert took < 120 and ("heartbeat" in run.error or "worker" in run.error), run.error
        assert scratch.marker(live(scratch, staging)) == "before", "the target is untouched"
        assert side not in scratch.databases(), "the half-restored side database is dropped"
        assert not run.needs_cleanup
        SanityCheck.objects.filter(target=staging).update(query="SELECT count(*) FROM users")
        rerun = request(operator, artifact, staging)
        wait_for(lambda: state_of(rerun) in ("succeeded", "failed"), 90, what="the re-run")
    rerun.refresh_from_db()
    assert rerun.state == "succeeded", rerun.error
    assert scratch.marker(live(scratch, staging)) == "restored"


def test_a_killed_work_horse_fails_the_run_at_once_through_the_failure_callback(operator, ready, scratch):
    staging, artifact = ready
    SanityCheck.objects.filter(target=staging).update(query="SELECT count(*) FROM users, pg_sleep(20)")
    with rq_workers(["restore"], count=1) as [worker]:
        run = request(operator, artifact, staging)
        wait_for(lambda: any(s["name"] == "sanity checks" and s["state"] == "running"
                             for s in RestoreRun.objects.get(pk=run.pk).steps), 90, what="the sanity step")
        [horse] = children_of(worker.pid)
        os.kill(horse, signal.SIGKILL)
        wait_for(lambda: state_of(run) == "failed", 15, what="the failure callback")
    run.refresh_from_db()
    assert "died by signal 9" in run.error
    assert scratch.marker(live(scratch, staging)) == "before"
    assert not any("__restore_" in name for name in scratch.databases())


def test_redis_flushed_while_a_run_is_queued_gets_it_queued_again_not_lost(operator, ready, scratch, settings,
                                                                           redis_conn):
    staging, artifact = ready
    settings.RUN_LOST_JOB_SECONDS = 0
    run = request(operator, artifact, staging)
    run.refresh_from_db()
    assert run.job_id and queues.get_queue("restore").count == 1
    redis_conn.flushdb()
    summary = reliability.reconcile()
    # The artifact's automatic verification (queued by its backup) lost its job too.
    automatic = VerificationRun.objects.get(artifact=artifact, trigger="backup")
    assert set(summary["requeued"]) == {str(run.pk), str(automatic.pk)}
    run.refresh_from_db()
    assert run.state == "queued" and run.enqueue_count == 2 and queues.get_queue("restore").count == 1
    assert AuditEvent.objects.get(action="restore.requeued").details["rq_status"] == "missing"
    with rq_workers(["restore"], count=1):
        wait_for(lambda: state_of(run) in ("succeeded", "failed"), 90, what="the re-queued restore")
    assert state_of(run) == "succeeded"


def test_a_job_lost_again_and_again_fails_the_run_with_the_reason(operator, ready, settings, redis_conn):
    staging, artifact = ready
    settings.RUN_LOST_JOB_SECONDS = 0
    run = request(operator, artifact, staging)
    for _ in range(MAX_ENQUEUES):
        redis_conn.flushdb()
        reliability.reconcile()
    run.refresh_from_db()
    assert run.state == "failed" and "lost 3 times" in run.error


def test_a_second_delivery_of_the_same_job_does_nothing(operator, ready, scratch):
    staging, artifact = ready
    run = request(operator, artifact, staging)
    queue = queues.get_queue("restore")
    duplicate = queue.enqueue(jobs.restore_run_job, str(run.pk))
    with rq_workers(["restore"], count=1):
        wait_for(lambda: state_of(run) in ("succeeded", "failed")
                 and duplicate.get_status(refresh=True) == "finished", 90, what="both deliveries")
    assert state_of(run) == "succeeded"
    assert duplicate.return_value() == "succeeded"
    assert AuditEvent.objects.filter(action="restore.started").count() == 1
    assert AuditEvent.objects.filter(action="restore.swapped").count() == 1


def test_a_rolled_back_request_enqueues_nothing(operator, ready, redis_conn):
    staging, artifact = ready
    with pytest.raises(RuntimeError), transaction.atomic():
        request(operator, artifact, staging)
        raise RuntimeError("the caller's transaction fails after the request")
    assert not RestoreRun.objects.exists()
    assert queues.get_queue("restore").count == 0
    assert not AuditEvent.objects.filter(action__startswith="restore.").exists()


def test_a_verification_runs_on_a_real_worker(operator, ready, scratch):
    _, artifact = ready
    with rq_workers(["verify"], count=1):
        run = verification_request(actor=operator, artifact=artifact, level="restore-test")
        wait_for(lambda: VerificationRun.objects.get(pk=run.pk).state in ("succeeded", "failed"), 90,
                 what="the verification")
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert not any("__restore_" in name for name in scratch.databases())


# --- the reconciler's repairs (no worker needed) ---------------------------------------------


def _running(run, *, ago: int = 300) -> RestoreRun:
    beat = timezone.now() - timedelta(seconds=ago)
    RestoreRun.objects.filter(pk=run.pk).update(state="running", started_at=beat, heartbeat_at=beat)
    run.refresh_from_db()
    return run


def test_a_worker_that_died_in_the_middle_of_the_swap_is_repaired(operator, ready, scratch, redis_conn):
    staging, artifact = ready
    run = _running(request(operator, artifact, staging))
    name = live(scratch, staging)
    pre = pg.copy_name(name, run.pk, "pre")
    with scratch.admin() as conn:
        conn.execute(f'ALTER DATABASE "{name}" RENAME TO "{pre}"')  # the first rename happened, then the crash
    assert name not in scratch.databases()
    reliability.reconcile()
    run.refresh_from_db()
    assert run.state == "failed" and "no heartbeat" in run.error
    assert scratch.marker(name) == "before" and pre not in scratch.databases()
    assert "renamed" in " ".join(run.results["reconcile"])
    assert AuditEvent.objects.filter(action="restore.reconciled").exists()


def test_a_worker_that_died_after_the_swap_committed_leaves_a_rollback_possible(operator, manager, ready, scratch,
                                                                               redis_conn, password):
    from restores import targets

    staging, artifact = ready
    targets.target_right_grant(actor=None, target=staging, user=manager, right="approve_restore")
    run = _running(request(operator, artifact, staging))
    name = live(scratch, staging)
    side = pg.copy_name(name, run.pk, "restore")
    scratch.create_named(side, marker="restored")
    pg.swap_in(scratch.url(name), run.pk)  # committed, then the worker died before recording it
    reliability.reconcile()
    run.refresh_from_db()
    assert run.state == "failed" and run.swapped_at and run.rollback_until
    assert scratch.marker(name) == "restored"
    run = rollback.restore_rollback(actor=manager, run=run, password=password)
    assert scratch.marker(name) == "before"
    assert copy_marker(scratch, pg.copy_name(name, run.pk, "failed")) == "restored"


def test_orphan_side_databases_of_finished_runs_are_dropped_and_strangers_left_alone(operator, ready, scratch,
                                                                                    redis_conn):
    staging, artifact = ready
    run = request(operator, artifact, staging)
    RestoreRun.objects.filter(pk=run.pk).update(state="failed")
    name = live(scratch, staging)
    ours = pg.copy_name(name, run.pk, "restore")
    stranger = pg.copy_name(name, "f" * 32, "restore")
    scratch.create_named(ours)
    scratch.create_named(stranger)
    dropped = reliability.drop_orphan_side_databases()
    assert dropped == [ours]
    assert stranger in scratch.databases() and ours not in scratch.databases()


def test_decrypted_files_of_finished_runs_are_removed_and_others_kept(operator, ready, temp_dir, redis_conn):
    staging, artifact = ready
    run = request(operator, artifact, staging)
    mine = temp_dir / f"drpanel-run-{run.pk}-abc.plain"
    stranger = temp_dir / f"drpanel-run-{'0' * 8}-0000-0000-0000-{'0' * 12}-abc.plain"
    for path in (mine, stranger):
        path.write_bytes(b"plaintext")
    assert reliability.remove_stale_files() == 0, "a queued run keeps its file"
    RestoreRun.objects.filter(pk=run.pk).update(state="failed")
    assert reliability.remove_stale_files() == 1
    assert not mine.exists() and stranger.exists()


def test_a_queued_run_whose_job_failed_before_starting_is_failed_with_the_reason(operator, ready, settings,
                                                                                 redis_conn):
    staging, artifact = ready
    settings.RUN_LOST_JOB_SECONDS = 0
    run = request(operator, artifact, staging)
    run.refresh_from_db()
    job = queues.get_queue("restore").fetch_job(run.job_id)
    job.set_status("failed")
    reliability.reconcile()
    run.refresh_from_db()
    assert run.state == "failed" and "failed before a worker started it" in run.error


def test_the_reconciler_job_expires_unapproved_restores(operator, ready, production, redis_conn):
    from drpanel.models import Approval

    _, artifact = ready
    run = request(operator, artifact, production)
    Approval.objects.filter(pk=run.approval_id).update(expires_at=timezone.now() - timedelta(seconds=5))
    summary = jobs.reconcile_job()
    assert summary["expired"] == 1 and state_of(run) == "expired"
