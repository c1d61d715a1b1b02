"""One admin alone cannot delete off-site backups through retention, nor turn schedules or a location off.

Shrinking retention, turning a schedule off, making backups rarer and disabling a storage location
wait for another Manager or Admin, who approves with their password (issue 12, item 3).
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from backups import systems
from backups.models import Artifact, ArtifactCopy, StorageLocation, System
from backups.retention import retention_apply
from compliance.approval_kinds import approvals_waiting_for
from compliance.models import AuditEvent
from drpanel.approvals import ApprovalError
from drpanel.models import Approval
from drpanel.permissions import Denied
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

POLICY = {"keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
SHRUNK = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


@pytest.fixture
def estate(tmp_path):
    """A system with five daily fulls, each stored on a local primary and a local off-site location."""
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_SHOP_URL", **POLICY)
    primary = StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path / "p"))
    offsite = StorageLocation.objects.create(name="vault", kind="local", role="offsite", path=str(tmp_path / "o"))
    now = timezone.now()
    files = []
    for day in range(5):
        artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                           created_at=now - timedelta(days=day), size=10, sha256="a" * 64,
                                           storage_key=f"shop/full-{day}.dump")
        for location in (primary, offsite):
            path = tmp_path / ("p" if location is primary else "o") / artifact.storage_key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"backup bytes")
            files.append(path)
            ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key, status="ok")
    return system, offsite, [f for f in files if "/o/" in str(f)]


def system_form(system: System, **fields) -> dict:
    data = {"name": system.name, "database_ref": system.database_ref, "config_paths": "",
            "schedule_enabled": "on" if system.schedule_enabled else "", "full_every_hours": system.full_every_hours,
            "incremental_every_hours": system.incremental_every_hours,
            "config_every_hours": system.config_every_hours, **{k: getattr(system, k) for k in POLICY}}
    data.update(fields)
    return {key: value for key, value in data.items() if value != ""}


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_one_admin_alone_cannot_delete_off_site_backups_through_retention(clients, admin, estate):
    system, _offsite, offsite_files = estate
    response = clients["admin"].post(reverse("backups:system-edit", args=[system.pk]), system_form(system, **SHRUNK))
    approval = Approval.objects.get(kind=systems.SYSTEM_CHANGE_APPROVAL)
    assert response.status_code == 302 and response.url == reverse("drpanel:approval-detail", args=[approval.pk])
    assert "This change waits for a second person" in clients["admin"].get(response.url).content.decode()
    form_page = clients["admin"].get(reverse("backups:system-edit", args=[system.pk])).content.decode()
    assert f'href="{response.url}"' in form_page
    system.refresh_from_db()
    assert {k: getattr(system, k) for k in POLICY} == POLICY, "the policy is unchanged"
    assert retention_apply(system) == 0
    assert all(path.exists() for path in offsite_files), "every off-site copy is still there"
    assert not ArtifactCopy.objects.exclude(status="ok").exists()
    assert events("system.updated") == [] and events("artifact.deleted") == []
    [requested] = events("approval.requested")
    assert requested.actor == admin and "keep_last 7 → 1" in requested.details["reason"]

    refused = clients["admin"].post(reverse("drpanel:approval-approve", args=[approval.pk]), {"password": PASSWORD})
    assert refused.status_code == 403 and events("access.denied")[-1].actor == admin
    system.refresh_from_db()
    assert system.keep_last == 7


def test_the_second_persons_approval_applies_exactly_the_shrunk_policy(admin, manager, estate):
    system, _offsite, offsite_files = estate
    waiting = systems.system_save(actor=admin, system=system, values=SHRUNK)
    assert [a["approval"].pk for a in approvals_waiting_for(manager)] == [waiting.pk]
    applied = systems.system_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    assert {k: getattr(applied, k) for k in POLICY} == SHRUNK
    [updated] = events("system.updated")
    assert updated.actor == manager and updated.details["approved_by"] == "manager"
    assert updated.details["changed"] == SHRUNK
    assert retention_apply(applied) == 4, "now retention keeps only the newest"
    assert sum(path.exists() for path in offsite_files) == 1


def test_self_approval_is_refused(admin, estate):
    system, _offsite, _files = estate
    waiting = systems.system_save(actor=admin, system=system, values={"keep_last": 2})
    with pytest.raises(Denied, match="your own request"):
        systems.system_change_approve(actor=admin, approval=waiting, password=PASSWORD)
    system.refresh_from_db()
    assert system.keep_last == 7


def test_a_change_to_the_system_after_the_request_voids_the_approval(admin, manager, estate):
    system, _offsite, _files = estate
    waiting = systems.system_save(actor=admin, system=system, values={"keep_last": 1})
    # A change that weakens nothing applies at once and moves the system on.
    system.refresh_from_db()
    systems.system_save(actor=admin, system=system, values={"description": "moved on"})
    with pytest.raises(ApprovalError, match="changed"):
        systems.system_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    system.refresh_from_db()
    assert system.keep_last == 7
    assert events("approval.binding_mismatch")[-1].actor == manager


@pytest.mark.parametrize(("values", "reason"), [
    ({"schedule_enabled": False}, "schedule_enabled off"),
    ({"full_every_hours": 168}, "full_every_hours 24 → 168"),
])
def test_turning_schedules_off_or_making_backups_rarer_waits(admin, estate, values, reason):
    system, _offsite, _files = estate
    waiting = systems.system_save(actor=admin, system=system, values=values)
    assert isinstance(waiting, Approval) and waiting.reason == reason
    system.refresh_from_db()
    assert system.schedule_enabled and system.full_every_hours == 24


def test_strengthening_changes_apply_at_once(admin, estate):
    system, _offsite, _files = estate
    saved = systems.system_save(actor=admin, system=system, values={"keep_last": 30, "full_every_hours": 12,
                                                                   "incremental_enabled": True})
    assert isinstance(saved, System) and (saved.keep_last, saved.full_every_hours) == (30, 12)
    assert not Approval.objects.exists() and len(events("system.updated")) == 1


def test_disabling_a_storage_location_waits_for_a_second_person(clients, admin, manager, estate):
    _system, offsite, _files = estate
    response = clients["admin"].post(reverse("backups:location-edit", args=[offsite.pk]), {
        "name": "vault", "kind": "local", "role": "offsite", "path": offsite.path})
    approval = Approval.objects.get(kind=systems.LOCATION_CHANGE_APPROVAL)
    assert response.url == reverse("drpanel:approval-detail", args=[approval.pk])
    offsite.refresh_from_db()
    assert offsite.enabled and events("location.updated") == []
    systems.location_change_approve(actor=manager, approval=approval, password=PASSWORD)
    offsite.refresh_from_db()
    assert not offsite.enabled
    assert events("location.updated")[-1].details["approved_by"] == "manager"
    enabled = systems.location_save(actor=admin, location=offsite, values={"enabled": True})
    assert isinstance(enabled, StorageLocation) and enabled.enabled, "enabling applies at once"
