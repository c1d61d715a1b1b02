"""Cancelling restores and verifications, against a real worker process: a queued job is taken off its queue,
a running one is stopped (RQ's stop-job command), its side or throw-away database is dropped, the target is
untouched; after the swap a cancel is refused (roll back instead). Operators cancel their own runs, managers any."""

import pytest
from rq.job import Job

from compliance.audit.verify import verify_chain
from compliance.models import AuditEvent
from drpanel import queues
from drpanel.services import api_token_create
from restores import cancel, execution, pg, reliability, requests, targets
from restores.models import RestoreRun, SanityCheck, VerificationRun
from restores.verifications import verification_request
from tests.factories import PASSWORD, UserFactory
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SLOW_SANITY = "SELECT count(*) FROM users, pg_sleep(90)"


@pytest.fixture
def slow_sanity(staging, monkeypatch):
    """The staging target's sanity check takes 90 s: a restore (or restore-test) is caught running in it."""
    SanityCheck.objects.filter(target=staging).update(query=SLOW_SANITY)
    monkeypatch.setenv("DRPANEL_SANITY_TIMEOUT_SECONDS", "180")
    return staging


def request(actor, artifact, target) -> RestoreRun:
    return requests.restore_request(actor=actor, artifact=artifact, target=target, mode="database-only",
                                    confirm=target.name)


def copies_of(scratch, run) -> list[str]:
    tag = pg.run_tag(run.pk)
    return [name for name in scratch.databases() if name.endswith(f"_{tag}")]


def step_running(model, run, name: str) -> bool:
    row = model.objects.get(pk=run.pk)
    steps = row.results if model is VerificationRun else row.steps
    return any(step["name"] == name and step["state"] == "running" for step in steps)


def rq_status(run, queue: str) -> str:
    job = Job.fetch(run.job_id, connection=queues.get_connection(queue))
    return str(job.get_status(refresh=True).value)


def bearer(user) -> dict:
    _, raw = api_token_create(actor=user, user=user, name="script", password=PASSWORD)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_cancelling_a_running_restore_stops_its_job_drops_the_side_database_and_leaves_the_target_untouched(
        operator, full_artifact, staging, slow_sanity, scratch, redis_conn):
    live = scratch.name("shop_staging")
    with rq_workers(["restore"], count=1) as [worker]:
        run = request(operator, full_artifact, staging)
        side = pg.copy_name(live, run.pk, "restore")
        wait_for(lambda: step_running(RestoreRun, run, "sanity checks") and side in scratch.databases(), 120,
                 what="the restore running its sanity checks on its side database")
        run = cancel.restore_cancel(actor=operator, run=RestoreRun.objects.get(pk=run.pk))
        assert run.state == "cancelled" and run.swapped_at is None
        assert rq_status(run, "restore") in ("stopped", "failed"), "the job was stopped, not left running"
        assert worker.poll() is None, "the worker itself lives on; only the job's work horse was stopped"
    assert side not in scratch.databases(), "the side database is dropped"
    assert not copies_of(scratch, run), "nothing named after the run is left"
    assert scratch.marker(live) == "before", "the target's rows are exactly as before"
    run.refresh_from_db()
    assert run.state == "cancelled" and not run.needs_cleanup and "cancelled by operator while running" in run.error
    event = AuditEvent.objects.get(action="restore.cancelled", object_id=str(run.pk))
    assert event.actor_username == "operator" and event.details["was"] == "running"
    assert event.details["job"] == "stopped" and event.details["target_untouched"] is True
    actions = set(AuditEvent.objects.filter(object_id=str(run.pk)).values_list("action", flat=True))
    assert not actions & {"restore.swapped", "restore.succeeded", "restore.failed"}, actions
    reliability.reconcile()
    assert RestoreRun.objects.get(pk=run.pk).state == "cancelled", "the reconciler leaves a cancelled run be"
    assert verify_chain().ok


def test_cancelling_a_queued_restore_takes_its_job_off_the_queue_and_no_worker_runs_it(
        operator, manager, full_artifact, staging, scratch, redis_conn, client):
    run = request(operator, full_artifact, staging)
    run.refresh_from_db()
    assert run.state == "queued" and run.job_id
    answer = client.post(f"/api/v1/restores/{run.pk}/cancel", content_type="application/json", **bearer(manager))
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "cancelled"
    assert rq_status(run, "restore") == "canceled"
    assert queues.get_queue("restore").count == 0
    with rq_workers(["restore"], count=1):
        wait_for(lambda: True, 1)
    run.refresh_from_db()
    assert run.state == "cancelled" and run.started_at is None, "no worker ran it"
    assert scratch.marker(scratch.name("shop_staging")) == "before"
    event = AuditEvent.objects.get(action="restore.cancelled")
    assert event.actor_username == "manager" and event.details["was"] == "queued"
    assert event.details["job"] == "cancelled"


def test_another_operator_cannot_cancel_a_restore_that_is_not_theirs(operator, full_artifact, staging, scratch,
                                                                    redis_conn, client):
    other = UserFactory(username="operator2", role="Operator")
    # Even one who may restore into the same target (and so sees the run).
    targets.target_right_grant(actor=None, target=staging, user=other, right="restore_to_target")
    run = request(operator, full_artifact, staging)
    denials = AuditEvent.objects.filter(action="access.denied").count()
    answer = client.post(f"/api/v1/restores/{run.pk}/cancel", content_type="application/json", **bearer(other))
    assert answer.status_code == 403, answer.content
    assert AuditEvent.objects.filter(action="access.denied").count() == denials + 1
    run.refresh_from_db()
    assert run.state == "queued" and rq_status(run, "restore") == "queued", "nothing changed"
    assert not AuditEvent.objects.filter(action="restore.cancelled").exists()


def test_a_restore_that_swapped_cannot_be_cancelled_roll_it_back_instead(operator, full_artifact, staging, scratch,
                                                                        redis_conn, client):
    run = request(operator, full_artifact, staging)
    run = execution.restore_run_execute(run.pk)
    assert run.state == "succeeded" and run.swapped_at
    answer = client.post(f"/api/v1/restores/{run.pk}/cancel", content_type="application/json", **bearer(operator))
    assert answer.status_code == 409 and "roll it back instead" in answer.json()["detail"]
    run.refresh_from_db()
    assert run.state == "succeeded"
    assert scratch.marker(scratch.name("shop_staging")) == "restored", "the restored data stays live"
    event = AuditEvent.objects.get(action="restore.cancel_refused", object_id=str(run.pk))
    assert event.actor_username == "operator" and event.outcome == "failure"


def test_the_page_offers_cancel_to_the_requester_and_cancels_with_the_confirm_button(
        operator, full_artifact, staging, scratch, redis_conn, client):
    other = UserFactory(username="operator2", role="Operator")
    targets.target_right_grant(actor=None, target=staging, user=other, right="restore_to_target")
    run = request(operator, full_artifact, staging)
    client.force_login(other)
    assert b'data-testid="cancel-run"' not in client.get(f"/restores/runs/{run.pk}/").content
    client.force_login(operator)
    page = client.get(f"/restores/runs/{run.pk}/").content.decode()
    assert 'data-testid="cancel-run"' in page and f"/restores/runs/{run.pk}/cancel" in page and "data-confirm" in page
    answer = client.post(f"/restores/runs/{run.pk}/cancel")
    assert answer.status_code == 302
    run.refresh_from_db()
    assert run.state == "cancelled"
    assert "Cancelled before its swap" in client.get(f"/restores/runs/{run.pk}/").content.decode()


def test_cancelling_a_running_verification_stops_it_and_drops_its_throwaway_database(
        operator, manager, full_artifact, staging, slow_sanity, scratch, redis_conn, client):
    before = full_artifact.last_verified_level
    with rq_workers(["verify"], count=1):
        run = verification_request(actor=operator, artifact=full_artifact, level="restore-test")
        wait_for(lambda: step_running(VerificationRun, run, "restore-test") and copies_of(scratch, run), 120,
                 what="the restore-test with its throw-away database")
        answer = client.post(f"/api/v1/verifications/{run.pk}/cancel", content_type="application/json",
                             **bearer(manager))
        assert answer.status_code == 200, answer.content
        assert answer.json()["state"] == "cancelled"
        run.refresh_from_db()
        assert rq_status(run, "verify") in ("stopped", "failed")
    assert not copies_of(scratch, run), "the throw-away database is dropped"
    run.refresh_from_db()
    assert run.state == "cancelled" and not run.needs_cleanup
    full_artifact.refresh_from_db()
    assert full_artifact.last_verified_level == before, "a cancelled check proves nothing"
    event = AuditEvent.objects.get(action="verification.cancelled")
    assert event.actor_username == "manager" and event.details["was"] == "running" and event.details["job"] == "stopped"
    assert not AuditEvent.objects.filter(action__in=["verification.succeeded", "verification.failed"]).exists()


def test_a_finished_verification_cannot_be_cancelled(operator, full_artifact, redis_conn):
    run = verification_request(actor=operator, artifact=full_artifact, level="checksum")
    VerificationRun.objects.filter(pk=run.pk).update(state="succeeded")
    with pytest.raises(cancel.CancelConflict):
        cancel.verification_cancel(actor=operator, run=run)
    assert VerificationRun.objects.get(pk=run.pk).state == "succeeded"
