"""The demo's targets: three on the demo PostgreSQL, secret files 0600, rights for the demo personas."""

import io
import stat

import pytest

from compliance.models import AuditEvent
from drpanel import secrets
from drpanel.demo import seed_users
from drpanel.permissions import has_object_right
from restores.demo import seed
from restores.models import APPROVE_RESTORE, RESTORE_TO_TARGET, Target

pytestmark = pytest.mark.django_db


def test_the_demo_seeds_three_targets_with_rights_and_runs_again_without_changes(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    settings.DEMO_DATABASE = "chatbotdysa"  # the default, whatever DRPANEL_DEMO_DATABASE the run was given
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", "demo password 123")
    monkeypatch.setenv("PORT", "8123")
    out = io.StringIO()
    seed_users(out)
    seed(out)
    targets = {t.name: t for t in Target.objects.all()}
    assert {(t.name, t.environment) for t in targets.values()} == {
        ("chatbotdysa-staging", "staging"), ("chatbotdysa-scratch", "scratch"),
        ("chatbotdysa-production", "production")}
    production = targets["chatbotdysa-production"]
    url = secrets.resolve(production.database_ref)
    assert url.endswith("/chatbotdysa") and production.database_ref.startswith(f"file:{tmp_path}")
    assert stat.S_IMODE((tmp_path / "demo" / "secrets" / "chatbotdysa.url").stat().st_mode) == 0o600
    assert secrets.resolve(targets["chatbotdysa-staging"].database_ref).endswith("/chatbotdysa_staging")
    assert production.health_checks.get().url == "http://127.0.0.1:8123/health"
    assert production.config_dir == str(tmp_path / "demo" / "chatbotdysa-config"), "the demo system's config"
    assert targets["chatbotdysa-scratch"].config_dir.startswith(str(tmp_path / "demo" / "targets"))
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    operator, manager = users.get(username="operator"), users.get(username="manager")
    for target in targets.values():
        assert has_object_right(operator, RESTORE_TO_TARGET, target)
        assert not has_object_right(operator, APPROVE_RESTORE, target)
    assert has_object_right(manager, APPROVE_RESTORE, production)
    assert not has_object_right(manager, APPROVE_RESTORE, targets["chatbotdysa-staging"])
    events = AuditEvent.objects.count()
    seed(io.StringIO())
    assert AuditEvent.objects.count() == events, "a second run changes nothing"


def test_the_demo_targets_follow_the_demo_database_and_receive_the_demo_system(settings, tmp_path, monkeypatch):
    from backups.models import System

    settings.VAR_DIR = tmp_path
    settings.DEMO_DATABASE = "chatbotdysa_elsewhere"
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", "demo password 123")
    System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_ANYTHING")
    seed_users(io.StringIO())
    seed(io.StringIO())
    targets = {t.name: t for t in Target.objects.select_related("system")}
    assert secrets.resolve(targets["chatbotdysa-production"].database_ref).endswith("/chatbotdysa_elsewhere")
    assert secrets.resolve(targets["chatbotdysa-staging"].database_ref).endswith("/chatbotdysa_elsewhere_staging")
    assert {t.system.name for t in targets.values()} == {"chatbotdysa"}


def test_the_demo_lets_the_operator_declare_database_corruption_and_asks_the_manager(settings, tmp_path,
                                                                                     monkeypatch):
    from backups.models import Artifact, System
    from restores.incidents import approvals_of, incident_declare

    settings.VAR_DIR = tmp_path
    settings.DEMO_DATABASE = "chatbotdysa"
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", "demo password 123")
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_ANYTHING")
    seed_users(io.StringIO())
    out = io.StringIO()
    seed(out)
    assert "Runbooks" in out.getvalue() and "database corruption or loss" in out.getvalue()
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.get(username="operator")
    production = Target.objects.get(name="chatbotdysa-production")
    full = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                                   sha256="0" * 64, storage_key="k", last_verified_level="decrypt")
    incident = incident_declare(actor=operator, system=system, scenario="database", severity="critical",
                                target=production)
    from restores.incident_steps import incident_step_complete, incident_step_skip, incident_step_start

    incident_step_skip(actor=operator, step=incident.steps.get(code="assess"), reason="demo")
    assert incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point")).result[
        "artifact"] == str(full.pk)
    incident_step_complete(actor=operator, step=incident.steps.get(code="go-restore"), decision="continue")
    restore = incident_step_start(actor=operator, step=incident.steps.get(code="restore"))
    assert restore.state == "waiting" and restore.restore_run.state == "awaiting_approval"
    assert approvals_of(incident)[0]["asked"] == ["manager"]
