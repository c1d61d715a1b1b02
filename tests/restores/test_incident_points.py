"""Disaster mode under continuous protection: the runbook step "choose the recovery point" offers a point in time.

The operator chooses the latest WAL received, a moment typed as a 3 a.m. operator types it
("10 minutes ago", a date and time with its zone), or the newest verified full; the restore step
then asks for a point-in-time restore of that moment (production still waits for a manager).
The restore itself through Barman is in ``test_pitr.py`` and the browser test; here the choice,
its refusals and what the restore step asks for.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from backups.models import Artifact, System
from compliance.audit.models import AuditEvent
from restores.incident_steps import incident_step_skip, incident_step_start, incident_step_sync
from restores.incidents import incident_declare
from restores.models import Incident, RestoreRun
from restores.targets import target_create, target_right_grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def system():
    return System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_INCIDENT_NOWHERE_URL",
                                 continuous_enabled=True)


@pytest.fixture
def base(system):
    """A base backup as the catalog holds one, ended two hours ago: the earliest point is then."""
    return Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", storage_key="barman:chatbotdysa/20261203T000000",
                                   created_at=timezone.now() - timedelta(hours=2),
                                   manifest={"backup_id": "20261203T000000"})


@pytest.fixture
def production(system, tmp_path, operator):
    target = target_create(actor=None, name="chatbotdysa-prod", environment="production", system=system,
                           database_ref="env:DRPANEL_SECRET_INCIDENT_PROD_URL", config_dir=str(tmp_path / "cfg"))
    target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target


def declared(operator, system, production) -> Incident:
    incident = incident_declare(actor=operator, system=system, scenario="database", severity="critical",
                                target=production)
    incident_step_skip(actor=operator, step=incident.steps.get(code="assess"), reason="the server is gone")
    return incident


def restore_step_started(operator, incident):
    incident_step_skip(actor=operator, step=incident.steps.get(code="go-restore"), reason="test")
    return incident_step_start(actor=operator, step=incident.steps.get(code="restore"))


def test_a_time_ago_becomes_the_exact_moment_and_the_restore_step_asks_for_that_point(operator, system, base,
                                                                                       production):
    incident = declared(operator, system, production)
    asked_at = timezone.now()

    done = incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"),
                               point="10 minutes ago")

    incident.refresh_from_db()
    assert done.state == "done" and done.result["kind"] == "time" and "point in time" in done.result["label"]
    assert incident.recovery_kind == "time" and incident.recovery_artifact is None
    expected = asked_at - timedelta(minutes=10)
    assert abs((incident.recovery_point_at - expected).total_seconds()) < 5
    step = restore_step_started(operator, incident)
    assert step.state == "waiting", step.error
    run = step.restore_run
    assert run.artifact is None and run.recovery_system == system and run.recovery_kind == "time"
    assert run.recovery_time == incident.recovery_point_at and run.mode == "database-only"
    assert run.state == RestoreRun.State.AWAITING_APPROVAL, "four eyes for production are unchanged"
    started = AuditEvent.objects.filter(action="incident.step_started").order_by("-seq").first()
    assert started.details["recovery_point"] == f"{run.recovery_point}"


def test_a_date_and_time_with_its_zone_is_taken_with_that_zone(operator, system, base, production):
    incident = declared(operator, system, production)
    moment = timezone.now().replace(microsecond=0) - timedelta(minutes=30)
    typed = moment.astimezone(timezone.get_fixed_timezone(330)).strftime("%Y-%m-%d %H:%M:%S+05:30")

    incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"), point=typed)

    incident.refresh_from_db()
    assert incident.recovery_point_at == moment


def test_nothing_chosen_under_continuous_protection_is_the_latest_wal(operator, system, base, production):
    incident = declared(operator, system, production)

    done = incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"))

    incident.refresh_from_db()
    assert done.state == "done" and incident.recovery_kind == "latest" and incident.recovery_point_at is None
    step = restore_step_started(operator, incident)
    assert step.restore_run.recovery_kind == "latest" and step.restore_run.artifact is None


def test_latest_becomes_a_moment_once_the_restore_replayed_it(operator, system, base, production):
    incident = declared(operator, system, production)
    incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"), point="latest")
    step = restore_step_started(operator, incident)
    last_commit = timezone.now() - timedelta(seconds=3)
    # What the worker writes when the run ends (restores.execution): its state and the recovery it replayed.
    RestoreRun.objects.filter(pk=step.restore_run_id).update(
        state=RestoreRun.State.SUCCEEDED, finished_at=timezone.now(), healthy_at=timezone.now(),
        results={"recovery": {"recovered_to": last_commit.isoformat()}})

    assert incident_step_sync(step)

    incident.refresh_from_db()
    assert incident.recovery_point_at == last_commit


@pytest.mark.parametrize(("typed", "says"), [
    ("3 hours ago", "is before the first base backup of chatbotdysa"),
    ("2099-01-01 00:00 UTC", "is in the future"),
    ("half past three", "not a date and time"),
    ("time", "type the moment"),
])
def test_a_moment_that_cannot_be_recovered_fails_the_step_with_the_reason(operator, system, base, production,
                                                                          typed, says):
    incident = declared(operator, system, production)

    failed = incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"), point=typed)

    assert failed.state == "failed" and says in failed.error
    incident.refresh_from_db()
    assert incident.recovery_kind == "" and incident.recovery_point_at is None
    assert AuditEvent.objects.filter(action="incident.step_failed").exists()


def test_without_a_base_backup_there_is_no_point_in_time(operator, system, production):
    incident = declared(operator, system, production)
    failed = incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"), point="latest")
    assert failed.state == "failed" and "has no base backup yet" in failed.error


def test_a_system_without_continuous_protection_has_no_point_in_time(operator, system, base, production):
    System.objects.filter(pk=system.pk).update(continuous_enabled=False)
    incident = declared(operator, System.objects.get(pk=system.pk), production)
    failed = incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"), point="latest")
    assert failed.state == "failed" and "not continuously protected" in failed.error


def test_the_page_offers_the_choice_and_sends_it(clients, operator, system, base, production):
    incident = declared(operator, system, production)
    page = clients["operator"].get(f"/incidents/{incident.pk}/").content.decode()
    assert 'data-testid="point-choice"' in page and 'value="latest" checked' in page
    assert "the latest WAL replays it too" in page  # database corruption: the hint to choose a moment before it

    answer = clients["operator"].post(f"/incidents/{incident.pk}/steps/2/start",
                                      {"point_kind": "time", "point_time": "10 minutes ago"})

    assert answer.status_code == 302
    incident.refresh_from_db()
    assert incident.recovery_kind == "time"
    assert abs((timezone.now() - timedelta(minutes=10) - incident.recovery_point_at).total_seconds()) < 5


def test_the_api_takes_the_recovery_point(clients, operator, system, base, production):
    incident = declared(operator, system, production)

    answer = clients["operator"].post(f"/api/v1/incidents/{incident.pk}/steps/2/start",
                                      {"recovery_point": "latest"}, content_type="application/json")

    assert answer.status_code == 200, answer.content
    incident.refresh_from_db()
    assert incident.recovery_kind == "latest"


def test_a_refused_start_gives_back_the_moment_typed_and_its_choice(clients, operator, system, base, production):
    incident = incident_declare(actor=operator, system=system, scenario="database", severity="critical",
                                target=production)  # assess still pending: the recovery point cannot start yet
    answer = clients["operator"].post(f"/incidents/{incident.pk}/steps/2/start",
                                      {"point_kind": "time", "point_time": "2026-12-03 02:55 Europe/Madrid"})
    page = clients["operator"].get(answer.url.split("#")[0]).content.decode()
    assert "finish or skip it first" in page
    assert 'value="2026-12-03 02:55 Europe/Madrid" data-kept' in page
    assert 'value="time" checked' in page and 'value="latest" checked' not in page
    assert incident.steps.get(code="recovery-point").state == "pending"
