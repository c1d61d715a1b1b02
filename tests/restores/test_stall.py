"""A restore stuck in one place (a sanity query that never ends) on a live worker whose heartbeat thread still
beats: with a small ``DRPANEL_RUN_STALL_SECONDS`` the reconciler fails it, drops its side database, and the target
is untouched."""

import time

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from restores import pg, reliability, requests
from restores.models import RestoreRun, SanityCheck
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STALL_SECONDS = 6


def test_a_restore_stuck_while_its_heartbeat_beats_is_failed_as_stalled(operator, full_artifact, staging, scratch,
                                                                       settings, monkeypatch, redis_conn):
    SanityCheck.objects.filter(target=staging).update(query="SELECT count(*) FROM users, pg_sleep(120)")
    monkeypatch.setenv("DRPANEL_SANITY_TIMEOUT_SECONDS", "240")
    settings.RUN_STALL_SECONDS = STALL_SECONDS
    live = scratch.name("shop_staging")
    with rq_workers(["restore"], count=1, env={"DRPANEL_HEARTBEAT_SECONDS": "1"}):
        run = requests.restore_request(actor=operator, artifact=full_artifact, target=staging, mode="database-only",
                                       confirm=staging.name)
        side = pg.copy_name(live, run.pk, "restore")
        wait_for(lambda: any(s["name"] == "sanity checks" and s["state"] == "running"
                             for s in RestoreRun.objects.get(pk=run.pk).steps) and side in scratch.databases(), 120,
                 what="the restore stuck in its sanity query")
        stuck_at = time.monotonic()

        def failed():
            row = RestoreRun.objects.get(pk=run.pk)
            beating = (timezone.now() - row.heartbeat_at).total_seconds() < 3
            reliability.reconcile()  # what the every-minute cron job does
            return RestoreRun.objects.get(pk=run.pk).state == "failed" and beating

        wait_for(failed, STALL_SECONDS + 30, interval=0.5, what="the stalled restore being failed while beating")
        took = time.monotonic() - stuck_at
    run.refresh_from_db()
    assert STALL_SECONDS - 1 <= took <= STALL_SECONDS + 30, took
    assert run.error.startswith("stalled: its progress has not moved"), run.error
    assert run.swapped_at is None
    assert scratch.marker(live) == "before", "the target is untouched"
    assert side not in scratch.databases(), "the side database is dropped"
    event = AuditEvent.objects.get(action="restore.failed", object_id=str(run.pk))
    assert "stalled" in event.details["error"] and event.details["target_untouched"] is True
