"""The transactional tests' flush (tests/flush.py): every table empty after it, the append-only triggers intact."""

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from compliance.audit.actions import AuditAction
from compliance.audit.models import TRUNCATE_TRIGGER
from compliance.audit.record import audit_record
from tests.flush import tables_with_rows

APPEND_ONLY = ("compliance_auditevent_no_update_delete", TRUNCATE_TRIGGER, "compliance_certification_final")


def trigger_modes() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgname = ANY(%s)", [list(APPEND_ONLY)])
        return dict(cursor.fetchall())


@pytest.mark.django_db(transaction=True)
def test_the_flush_empties_every_table_and_leaves_the_append_only_triggers_always_on(operator):
    audit_record(actor=operator, action=next(iter(AuditAction)))
    tables = connection.introspection.django_table_names(only_existing=True)
    assert {"auth_user", "compliance_auditevent"} <= set(tables_with_rows(connection, tables))

    call_command("flush", interactive=False, inhibit_post_migrate=True)

    assert tables_with_rows(connection, tables) == []
    assert trigger_modes() == dict.fromkeys(APPEND_ONLY, "A")
    call_command("flush", interactive=False, inhibit_post_migrate=True)  # nothing to delete: nothing runs
    assert trigger_modes() == dict.fromkeys(APPEND_ONLY, "A")


@pytest.mark.django_db(transaction=True)
def test_after_a_flush_the_audit_table_still_refuses_delete(operator):
    call_command("flush", interactive=False)
    audit_record(actor=operator, action=next(iter(AuditAction)))
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM compliance_auditevent")
