"""The worker checks again when a run starts (rights, approval age); restore time limits follow the artifact's
size; a run whose progress stopped moving is failed even though its heartbeat still beats."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rq.job import Job

from compliance.models import AuditEvent
from drpanel import queues, runs
from drpanel.models import Approval
from restores import execution, pg, reliability, requests, targets
from restores.models import RestoreRun, VerificationRun
from restores.verifications import verification_execute, verification_request

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = pytest.mark.django_db


def request(actor, artifact, target, mode="database-only") -> RestoreRun:
    return requests.restore_request(actor=actor, artifact=artifact, target=target, mode=mode, confirm=target.name)


def live(scratch, target) -> str:
    return scratch.name(target.name.replace("-", "_"))


def assert_refused_untouched(run, scratch, target, words: str) -> None:
    """The run failed with the reason, nothing was restored, the target is as it was, and it was audited."""
    run.refresh_from_db()
    assert run.state == "failed" and words in run.error, run.error
    assert run.swapped_at is None and run.started_at is not None
    assert scratch.marker(live(scratch, target)) == "before", "the target is untouched"
    assert pg.copy_name(live(scratch, target), run.pk, "restore") not in scratch.databases(), "no side database"
    refused = AuditEvent.objects.get(action="restore.refused", object_id=str(run.pk))
    assert words in refused.details["reason"] and refused.outcome == "failure"
    assert AuditEvent.objects.filter(action="restore.failed", object_id=str(run.pk)).exists()
    assert not AuditEvent.objects.filter(action="restore.swapped", object_id=str(run.pk)).exists()


# --- rights and approvals checked again by the worker --------------------------------------------


def test_an_approval_older_than_the_execution_window_is_refused_by_the_worker(
        operator, manager, full_artifact, production, scratch, password, settings):
    settings.APPROVAL_EXECUTION_MINUTES = 60
    run = requests.restore_approve(actor=manager, run=request(operator, full_artifact, production), password=password)
    assert run.state == "queued"
    # The job sat in a stuck queue for 61 minutes after the approval.
    Approval.objects.filter(pk=run.approval_id).update(decided_at=timezone.now() - timedelta(minutes=61))
    run = execution.restore_run_execute(run.pk)
    assert_refused_untouched(run, scratch, production, "past the execution window of 60 minutes")


def test_an_approval_inside_the_execution_window_runs(operator, manager, full_artifact, production, scratch, password,
                                                      settings):
    settings.APPROVAL_EXECUTION_MINUTES = 60
    run = requests.restore_approve(actor=manager, run=request(operator, full_artifact, production), password=password)
    Approval.objects.filter(pk=run.approval_id).update(decided_at=timezone.now() - timedelta(minutes=59))
    run = execution.restore_run_execute(run.pk)
    assert run.state == "succeeded", run.error
    assert not AuditEvent.objects.filter(action="restore.refused").exists()


def test_an_approver_whose_right_was_withdrawn_since_is_refused_by_the_worker(
        operator, manager, full_artifact, production, scratch, password):
    run = requests.restore_approve(actor=manager, run=request(operator, full_artifact, production), password=password)
    targets.target_right_revoke(actor=None, target=production, user=manager, right="approve_restore")
    run = execution.restore_run_execute(run.pk)
    assert_refused_untouched(run, scratch, production, "the approver manager no longer holds approve_restore")


def test_a_deactivated_approver_is_refused_by_the_worker(operator, manager, full_artifact, production, scratch,
                                                         password):
    run = requests.restore_approve(actor=manager, run=request(operator, full_artifact, production), password=password)
    type(manager).objects.filter(pk=manager.pk).update(is_active=False)
    run = execution.restore_run_execute(run.pk)
    assert_refused_untouched(run, scratch, production, "the approver manager is no longer active")


def test_a_requester_whose_right_was_withdrawn_since_is_refused_by_the_worker(operator, full_artifact, staging,
                                                                             scratch):
    run = request(operator, full_artifact, staging)
    assert run.state == "queued"
    targets.target_right_revoke(actor=None, target=staging, user=operator, right="restore_to_target")
    run = execution.restore_run_execute(run.pk)
    assert_refused_untouched(run, scratch, staging, "the requester operator no longer holds restore_to_target")


def test_a_deactivated_requester_is_refused_by_the_worker(operator, full_artifact, staging, scratch):
    run = request(operator, full_artifact, staging)
    type(operator).objects.filter(pk=operator.pk).update(is_active=False)
    run = execution.restore_run_execute(run.pk)
    assert_refused_untouched(run, scratch, staging, "the requester operator is no longer active")


def test_a_verification_whose_requester_was_deactivated_is_refused_by_the_worker(operator, full_artifact, scratch):
    run = verification_request(actor=operator, artifact=full_artifact, level="restore-test")
    before = full_artifact.last_verified_level
    type(operator).objects.filter(pk=operator.pk).update(is_active=False)
    run = verification_execute(run.pk)
    assert run.state == "failed" and "the requester operator is no longer active" in run.error, run.error
    assert run.reached_level == ""
    full_artifact.refresh_from_db()
    assert full_artifact.last_verified_level == before, "a refused run proves nothing"
    assert not [name for name in scratch.databases() if name.endswith(f"_{pg.run_tag(run.pk)}")]
    event = AuditEvent.objects.get(action="verification.refused")
    assert event.details["run"] == str(run.pk) and "no longer active" in event.details["reason"]


def test_a_verification_whose_requester_lost_the_right_to_start_jobs_is_refused(operator, full_artifact):
    run = verification_request(actor=operator, artifact=full_artifact, level="checksum")
    operator.groups.clear()
    run = verification_execute(run.pk)
    assert run.state == "failed" and "may no longer start jobs" in run.error
    assert AuditEvent.objects.filter(action="verification.refused").count() == 1


def test_the_schedules_verifications_are_the_systems_own_and_run(full_artifact):
    run = verification_request(actor=None, artifact=full_artifact, level="checksum", trigger="schedule")
    run = verification_execute(run.pk)
    assert run.state == "succeeded", run.error


# --- the time limit follows the artifact's size --------------------------------------------------


def test_the_restore_time_limit_follows_the_size_capped(settings):
    settings.RESTORE_TIMEOUT_BASE_SECONDS = 1800
    settings.RESTORE_TIMEOUT_MB_PER_SECOND = 5
    settings.RESTORE_TIMEOUT_MAX_SECONDS = 24 * 3600
    assert execution.restore_timeout(0) == 1800
    assert execution.restore_timeout(10 * 1024 ** 3) == 1800 + 2048
    assert execution.restore_timeout(10 * 1024 ** 4) == 24 * 3600


@pytest.mark.django_db(transaction=True)
def test_a_restores_job_carries_the_time_limit_of_its_artifact(operator, full_artifact, staging, settings,
                                                               redis_conn):
    settings.RESTORE_TIMEOUT_BASE_SECONDS = 600
    settings.RESTORE_TIMEOUT_MB_PER_SECOND = 1
    full_artifact.__class__.objects.filter(pk=full_artifact.pk).update(size=300 * 1024 * 1024,
                                                                       plaintext_size=300 * 1024 * 1024)
    run = request(operator, full_artifact, staging)
    run.refresh_from_db()
    job = Job.fetch(run.job_id, connection=queues.get_connection("restore"))
    assert job.timeout == 600 + 600 == execution.RESTORE_RUNS.timeout_for(run.pk)
    assert job.timeout < 24 * 3600


# --- a stalled run is failed, heartbeat or not ---------------------------------------------------


def running(run_model, run, *, progress_age: float, beat_age: float = 0.5):
    now = timezone.now()
    run_model.objects.filter(pk=run.pk).update(state="running", started_at=now - timedelta(seconds=progress_age + 5),
                                               heartbeat_at=now - timedelta(seconds=beat_age),
                                               progress_at=now - timedelta(seconds=progress_age))


def test_a_restore_whose_progress_stopped_is_failed_though_its_heartbeat_beats(operator, full_artifact, staging,
                                                                             scratch, settings, redis_conn):
    settings.RUN_STALL_SECONDS = 30
    run = request(operator, full_artifact, staging)
    running(RestoreRun, run, progress_age=10)
    summary = runs.reconcile_runs(run_kinds=[execution.RESTORE_RUNS])
    assert str(run.pk) not in summary["failed"], "progress 10 s ago is not a stall"
    running(RestoreRun, run, progress_age=31)
    summary = runs.reconcile_runs(run_kinds=[execution.RESTORE_RUNS])
    run.refresh_from_db()
    assert str(run.pk) in summary["failed"] and run.state == "failed"
    assert "stalled: its progress has not moved for 31 s" in run.error, run.error
    assert scratch.marker(live(scratch, staging)) == "before"
    assert AuditEvent.objects.filter(action="restore.failed", object_id=str(run.pk)).exists()


def test_a_verification_whose_progress_stopped_is_failed(operator, full_artifact, settings, redis_conn):
    settings.RUN_STALL_SECONDS = 30
    run = verification_request(actor=operator, artifact=full_artifact, level="decrypt")
    running(VerificationRun, run, progress_age=40)
    reliability.reconcile()
    run.refresh_from_db()
    assert run.state == "failed" and "stalled" in run.error


def test_progress_moves_the_clock_and_new_words_alone_do_not(operator, full_artifact, staging):
    run = request(operator, full_artifact, staging)
    old = timezone.now() - timedelta(hours=1)
    steps = runs.StepList(run, [("one", 1), ("two", 1)], save_interval=0)
    first = RestoreRun.objects.get(pk=run.pk).progress_at
    assert first > old
    RestoreRun.objects.filter(pk=run.pk).update(progress_at=old)
    steps.progress("one", detail="same place, new words")
    steps.save()
    assert RestoreRun.objects.get(pk=run.pk).progress_at == old, "new words without progress are no progress"
    assert RestoreRun.objects.get(pk=run.pk).heartbeat_at > old, "the save still says the worker is alive"
    steps.progress("one", 0.5, bytes=10)
    assert RestoreRun.objects.get(pk=run.pk).progress_at > old
