"""The fault campaign, restore side (``make chaos``; it runs in ``make test`` too).

Each fault hits real processes: a worker (and its work horse, and the horse's children) killed with
SIGKILL in the middle of a restore-test verification; the restoring backend's PostgreSQL connection
terminated by ``pg_terminate_backend`` in the middle of a restore; Redis restarted (connections
dropped, data gone) while a verification waits in its queue. After each: the run's row says what
happened, within the stale-run bound; nothing the target held is lost; no throw-away or side database
is left behind; and the audit chain is intact (``compliance.audit.verify.verify_chain``).

The kill -9 in the middle of a restore itself is ``test_kill_9_mid_restore_…`` in
``tests/restores/test_restore_reliability.py`` (also marked ``chaos``).
"""

import time

import pytest

from compliance.audit.verify import verify_chain
from compliance.models import AuditEvent
from restores import pg, reliability, requests
from restores.models import RestoreRun, SanityCheck, VerificationRun
from restores.verifications import verification_request
from tests.chaos_support import kill_tree, restart_redis_database
from tests.restores.test_restore_reliability import alive
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# A fast clock for the worker the test kills: it beats every second and its run is stale after four
# (production: 5 and 45; the kill -9 mid-restore in test_restore_reliability keeps a slower clock).
STALE_SECONDS = 4
FAST_CLOCK = {"DRPANEL_HEARTBEAT_SECONDS": "1", "DRPANEL_RUN_STALE_SECONDS": str(STALE_SECONDS)}
SLOW_SANITY = "SELECT count(*) FROM users, pg_sleep(60)"


def chain_is_intact() -> None:
    result = verify_chain()
    assert result.ok, result


def copies_of(scratch, run) -> list[str]:
    """The databases named after ``run`` (side, throw-away, pre-restore copies)."""
    tag = pg.run_tag(run.pk)
    return [name for name in scratch.databases() if name.endswith(f"_{tag}")]


def step_running(model, run, name: str) -> bool:
    row = model.objects.get(pk=run.pk)
    steps = row.results if model is VerificationRun else row.steps
    return any(step["name"] == name and step["state"] == "running" for step in steps)


@pytest.fixture
def slow_sanity(staging, monkeypatch):
    """The staging target's sanity check takes a minute: the restore (or restore-test) is caught in it."""
    SanityCheck.objects.filter(target=staging).update(query=SLOW_SANITY)
    monkeypatch.setenv("DRPANEL_SANITY_TIMEOUT_SECONDS", "120")
    return staging


def test_kill_9_mid_verify_fails_the_run_in_time_and_drops_the_throwaway_database(
        operator, staging, slow_sanity, full_artifact, scratch, settings, redis_conn):
    settings.RUN_STALE_SECONDS = STALE_SECONDS
    with rq_workers(["verify"], count=1, env=FAST_CLOCK) as [worker]:
        run = verification_request(actor=operator, artifact=full_artifact, level="restore-test")
        wait_for(lambda: step_running(VerificationRun, run, "restore-test") and copies_of(scratch, run), 90,
                 what="the restore-test step with its throw-away database")
        throwaway = copies_of(scratch, run)
        killed = kill_tree(worker.pid)
        killed_at = time.monotonic()
        assert not any(alive(pid) for pid in killed)
        worker.wait()

    def failed():
        reliability.reconcile()  # what the every-minute cron job does
        return VerificationRun.objects.get(pk=run.pk).state == "failed"

    wait_for(failed, STALE_SECONDS + 60, interval=1, what="the verification being marked failed")
    took = time.monotonic() - killed_at
    run.refresh_from_db()
    assert took <= STALE_SECONDS + 60, took
    assert "no heartbeat" in run.error and "worker died or was killed" in run.error, run.error
    assert run.reached_level != "restore-test"
    full_artifact.refresh_from_db()
    assert full_artifact.last_verified_level != "restore-test", "a killed check proves nothing"
    reliability.reconcile()
    assert not set(throwaway) & set(scratch.databases()), "the throw-away database is dropped"
    assert not VerificationRun.objects.get(pk=run.pk).needs_cleanup
    chain_is_intact()


def test_the_restoring_backend_terminated_mid_restore_fails_the_run_and_leaves_the_target_untouched(
        operator, staging, slow_sanity, full_artifact, scratch, redis_conn):
    live = scratch.name("shop_staging")
    with rq_workers(["restore"], count=1):
        run = requests.restore_request(actor=operator, artifact=full_artifact, target=staging, mode="database-only",
                                       confirm=staging.name)
        side = pg.copy_name(live, run.pk, "restore")
        wait_for(lambda: step_running(RestoreRun, run, "sanity checks") and side in scratch.databases(), 90,
                 what="the restore's sanity step on its side database")
        with scratch.admin() as conn:
            terminated = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()", [side]).fetchall()
        assert terminated and all(ok for (ok,) in terminated), "the restore's connection was there to drop"
        wait_for(lambda: RestoreRun.objects.get(pk=run.pk).state in ("failed", "succeeded"), 60,
                 what="the run ending")
    run.refresh_from_db()
    assert run.state == "failed", "a dropped connection is a failed restore, not a pass"
    assert "terminat" in run.error.lower() or "connection" in run.error.lower(), run.error
    assert run.swapped_at is None
    assert scratch.marker(live) == "before", "the target is untouched"
    reliability.reconcile()
    assert side not in scratch.databases(), "the side database is gone after the reconciler"
    assert AuditEvent.objects.filter(action="restore.failed", object_id=str(run.pk)).exists()
    chain_is_intact()


def test_redis_restarted_while_a_verification_waits_gets_it_queued_again_and_done(
        operator, staging, full_artifact, scratch, settings, redis_conn):
    settings.RUN_LOST_JOB_SECONDS = 0
    # The backup behind the fixture queued its own decrypt verification: it waits too and is lost with Redis.
    after_backup = {str(pk) for pk in VerificationRun.objects.filter(state="queued").values_list("pk", flat=True)}
    run = verification_request(actor=operator, artifact=full_artifact, level="restore-test")
    run.refresh_from_db()
    assert run.state == "queued" and run.job_id
    restart_redis_database(redis_conn)
    summary = reliability.reconcile()
    assert sorted(summary["requeued"]) == sorted(after_backup | {str(run.pk)})
    run.refresh_from_db()
    assert run.state == "queued" and run.enqueue_count == 2
    requeued = AuditEvent.objects.get(action="verification.requeued", details__run=str(run.pk))
    assert requeued.details["rq_status"] == "missing"
    with rq_workers(["verify"], count=1):
        wait_for(lambda: VerificationRun.objects.get(pk=run.pk).state in ("succeeded", "failed"), 90,
                 what="the re-queued verification")
    run.refresh_from_db()
    assert run.state == "succeeded" and run.reached_level == "restore-test", run.error
    assert not copies_of(scratch, run), "its throw-away database was dropped after the check"
    chain_is_intact()
