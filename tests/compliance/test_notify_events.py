"""Approvals waiting and the certification due reach the people who may act, through their roster entries."""

import pytest
from guardian.shortcuts import assign_perm

from backups.models import Artifact, System
from compliance.models import Contact
from compliance.notify_events import approval_waiting_notify, certification_due_notify
from drpanel import queues
from drpanel.approvals import protection_change_request
from restores.models import APPROVE_RESTORE, Target
from restores.targets import TARGET_CHANGE_APPROVAL
from tests.factories import UserFactory
from tests.support import restore_awaiting_approval

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.notify_support"]


@pytest.fixture
def people(operator, manager, admin):
    """The panel's users and their roster entries (matched by address); one more manager, not on the roster."""
    other = UserFactory(username="manager2", role="Manager")
    for user, level in ((operator, "l1"), (manager, "l2"), (admin, "l3")):
        Contact.objects.create(level=level, name=user.username, email=user.email.upper(), response_minutes=5)
    return {"operator": operator, "manager": manager, "admin": admin, "manager2": other}


@pytest.fixture
def production(db):
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_UNSET_FOR_TEST")
    artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                                       storage_key="k", sha256="a" * 64)
    target = Target.objects.create(name="shop-production", environment="production", system=system,
                                   database_ref="env:DRPANEL_UNSET_FOR_TEST")
    return artifact, target


def test_a_production_restore_waiting_is_sent_to_who_holds_approve_restore(people, production, outbox, redis_conn,
                                                                          django_capture_on_commit_callbacks):
    artifact, target = production
    assign_perm(APPROVE_RESTORE, people["manager"], target)
    with django_capture_on_commit_callbacks(execute=True):
        run = restore_awaiting_approval(artifact=artifact, target=target, requested_by=people["operator"])
    # Requesting queued the job (by dotted path, from the core); here it runs in this process.
    assert [job.func_name for job in queues.get_queue("default").jobs] == ["compliance.jobs.approval_waiting_job"]
    assert approval_waiting_notify(run.approval_id) == 1
    [mail] = list(outbox)
    assert mail.to == ["MANAGER@EXAMPLE.COM"] and mail.subject == "[DR Panel] Approval waiting: Restore into production"
    assert f"/restores/runs/{run.pk}/" in mail.body and "requested by operator" in mail.body


def test_a_protection_change_is_sent_to_every_other_manager_and_admin(people, production, outbox):
    _, target = production
    approval = protection_change_request(actor=people["manager"], kind=TARGET_CHANGE_APPROVAL, subject=target,
                                         params={"environment": "staging"})
    assert approval_waiting_notify(approval.pk) == 1
    assert [m.to for m in outbox] == [["ADMIN@EXAMPLE.COM"]], "not the requester; manager2 has no roster entry"


def test_a_decided_approval_is_not_announced(people, production, outbox):
    _, target = production
    approval = protection_change_request(actor=people["manager"], kind=TARGET_CHANGE_APPROVAL, subject=target,
                                         params={"environment": "staging"})
    approval.state = "rejected"
    approval.save(update_fields=["state"])
    assert approval_waiting_notify(approval.pk) == 0
    assert outbox == []


def test_last_months_unsigned_certification_is_due_for_the_managers(people, panel_clock, outbox):
    assert certification_due_notify() == 1
    [mail] = list(outbox)
    assert mail.to == ["MANAGER@EXAMPLE.COM"] and "2026-10" in mail.subject
    assert "/certifications/2026-10/" in mail.body
