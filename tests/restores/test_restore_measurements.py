"""Restore runs in the dashboard and the health score: measured RTOs, drills, restore tests, approvals,
and the decrypt-level verification every new full gets right after its backup (on a real worker)."""

from datetime import timedelta

import pytest
from django.urls import reverse

from backups.models import Artifact, BackupRun
from backups.runs import backup_request
from compliance.approval_kinds import approvals_waiting_for
from compliance.health import health_evaluate, last_restore_test
from compliance.measurements import drill_rtos, last_rto
from drpanel import clock
from drpanel.approvals import approval_request
from drpanel.dashboard import dashboard_json
from restores import targets
from restores.models import RestoreRun, Target, VerificationRun
from tests.factories import UserFactory
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures", "tests.restore_fixtures",
                  "tests.loop_fixtures"]


def target(name: str, environment: str, system=None) -> Target:
    return Target.objects.create(name=name, environment=environment,
                                 database_ref=f"env:DRPANEL_SECRET_{name.upper()}_URL", system=system)


def timed_run(artifact, into: Target, requester, *, healthy_ago: timedelta, rto: float, state="succeeded",
              drill=False) -> RestoreRun:
    """A restore run row that went live ``healthy_ago`` before the panel's now, ``rto`` seconds after its request."""
    healthy_at = clock.now() - healthy_ago
    return RestoreRun.objects.create(
        artifact=artifact, target=into, mode="database-only", state=state, is_drill=drill, requested_by=requester,
        created_at=healthy_at - timedelta(seconds=rto), healthy_at=healthy_at, finished_at=healthy_at,
        rto_seconds=rto, rpo_seconds=3600.0)


# --- the dashboard's RTO --------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_last_rto_is_the_newest_restore_that_went_live_linked_to_its_run(catalog, healthy, operator):
    staging = target("staging", "staging", catalog.system)
    timed_run(healthy["full"], staging, operator, healthy_ago=timedelta(days=3), rto=300.0)
    newest = timed_run(healthy["full"], staging, operator, healthy_ago=timedelta(hours=5), rto=412.4)
    RestoreRun.objects.create(artifact=healthy["full"], target=target("scratch", "scratch"), mode="database-only",
                              state="failed", requested_by=operator, created_at=clock.now() - timedelta(hours=1))
    rto = last_rto()
    assert (rto.seconds, rto.url) == (412, reverse("restores:run-detail", args=[newest.pk]))
    assert rto.at == newest.healthy_at and "staging" in rto.label
    assert dashboard_json()["rto_seconds"] == 412


@pytest.mark.django_db
def test_the_rto_chart_holds_the_drills_only_oldest_first(catalog, healthy, operator, manager):
    staging, production = target("staging", "staging"), target("production", "production")
    timed_run(healthy["full"], staging, operator, healthy_ago=timedelta(days=40), rto=200.0)  # before the chart
    first = timed_run(healthy["full"], staging, operator, healthy_ago=timedelta(days=10), rto=950.0)
    rolled_back = timed_run(healthy["full"], target("scratch", "scratch"), operator, healthy_ago=timedelta(days=2),
                            rto=600.0, state="rolled_back", drill=True)
    timed_run(healthy["full"], production, manager, healthy_ago=timedelta(days=1), rto=100.0)
    drills = drill_rtos(clock.now() - timedelta(days=30))
    assert [d.url for d in drills] == [reverse("restores:run-detail", args=[r.pk]) for r in (first, rolled_back)]
    assert [d.seconds for d in drills] == [950, 600]
    assert last_rto().seconds == 100, "a production restore's RTO is a measurement too"


@pytest.mark.django_db
def test_the_dashboard_shows_the_measured_rto_against_the_target_and_draws_the_drills(clients, catalog, healthy,
                                                                                        operator):
    run = timed_run(healthy["full"], target("staging", "staging"), operator, healthy_ago=timedelta(hours=2),
                    rto=1200.0)
    html = clients["auditor"].get(reverse("drpanel:dashboard")).content.decode()
    assert 'data-testid="rto-empty"' not in html
    assert "1200 s" in html and "over target" in html
    assert html.count(reverse("restores:run-detail", args=[run.pk])) >= 3, "figure, label and the chart's bar"
    assert 'id="rto-chart-title"' in html and "1 drill(s) against the 15 min target" in html


# --- health: restore tests ------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_restore_into_staging_counts_as_a_restore_test_and_the_newer_source_wins(catalog, operator):
    full = catalog.artifact("full", timedelta(hours=30), verified="restore-test", verified_age=timedelta(days=5))
    assert last_restore_test(catalog.system).evidence.object_type == "backups.artifact"
    run = timed_run(full, target("staging", "staging", catalog.system), operator, healthy_ago=timedelta(days=1),
                    rto=90.0)
    test = last_restore_test(catalog.system)
    assert test.at == run.healthy_at
    assert (test.evidence.object_type, test.evidence.url) == ("restores.restorerun",
                                                               reverse("restores:run-detail", args=[run.pk]))
    full.last_verified_at = clock.now() - timedelta(hours=1)
    full.save(update_fields=["last_verified_at"])
    assert last_restore_test(catalog.system).evidence.object_type == "backups.artifact"


@pytest.mark.django_db
def test_production_restores_and_failed_drills_are_not_restore_tests(catalog, operator, manager):
    full = catalog.artifact("full", timedelta(hours=3))
    timed_run(full, target("production", "production"), manager, healthy_ago=timedelta(hours=1), rto=60.0)
    RestoreRun.objects.create(artifact=full, target=target("scratch", "scratch"), mode="database-only",
                              state="failed", requested_by=operator, is_drill=True)
    assert last_restore_test(catalog.system) is None


# --- approvals waiting ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_production_restore_waits_for_managers_holding_approve_restore_but_not_the_requester(catalog, healthy,
                                                                                                 operator, manager):
    production = target("production", "production")
    other_manager = UserFactory(username="manager2", role="Manager")
    targets.target_right_grant(actor=None, target=production, user=manager, right="approve_restore")
    targets.target_right_grant(actor=None, target=production, user=other_manager, right="approve_restore")
    run = RestoreRun.objects.create(artifact=healthy["full"], target=production, mode="database-only",
                                    state="awaiting_approval", requested_by=manager)
    approval_request(actor=manager, kind="restore.production", subject=run, params={"target": production.pk})
    waiting = approvals_waiting_for(other_manager)
    assert [(w["label"], w["url"], w["requested_by"]) for w in waiting] == [
        ("Restore into production", reverse("restores:run-detail", args=[run.pk]), "manager")]
    assert approvals_waiting_for(manager) == [], "never one's own request"
    assert approvals_waiting_for(UserFactory(username="manager3", role="Manager")) == [], "no approve_restore right"
    assert approvals_waiting_for(operator) == []


# --- a new full is verified right away (real worker) ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_each_successful_full_backup_is_verified_at_decrypt_level_by_a_worker(shop_system, operator, redis_conn):
    with rq_workers(count=1):
        run = backup_request(actor=operator, system=shop_system, kind="full")
        wait_for(lambda: BackupRun.objects.get(pk=run.pk).is_done, 120, what="the backup")
        artifact = BackupRun.objects.get(pk=run.pk).artifact
        assert artifact is not None and artifact.status == Artifact.Status.AVAILABLE
        verification = wait_for(lambda: VerificationRun.objects.filter(artifact=artifact, state="succeeded").first(),
                                120, what="the automatic verification")
    assert (verification.level, verification.trigger, verification.requested_by) == ("decrypt", "backup", None)
    artifact.refresh_from_db()
    assert artifact.last_verified_level == "decrypt"
    checks = {c.code: c for c in health_evaluate(shop_system).checks}
    assert checks["verified"].passed, checks["verified"].reason
    assert checks["verified"].evidence[0].url == reverse("restores:verification-detail", args=[verification.pk])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_config_backups_are_not_verified_automatically(shop_system, operator, redis_conn):
    with rq_workers(count=1):
        run = backup_request(actor=operator, system=shop_system, kind="config")
        wait_for(lambda: BackupRun.objects.get(pk=run.pk).is_done, 120, what="the backup")
    assert BackupRun.objects.get(pk=run.pk).state == "succeeded"
    assert not VerificationRun.objects.exists()
