"""System checks of the panel's own: what ``manage.py check --deploy`` and a production start refuse.

``drpanel.E002``–``E007`` — in production, the runtime database role (``DATABASE_URL``) is a
superuser, owns the audit table or may act as its owner, has BYPASSRLS / REPLICATION /
CREATEROLE, holds more than SELECT and INSERT on the audit table, may set
``session_replication_role``, or could not be checked (``drpanel.dbroles``). Not a deploy-only
check: every management command that runs checks (``rqworker``, ``rqcron``, ``check``, ``migrate``
before it switches to the migration role) refuses, and the web process calls
``refuse_unsafe_start`` when the WSGI application loads.

``drpanel.E001`` — the demo's users (``operator``, ``manager``, ``auditor``, ``admin`` with their
``@example.com`` addresses, whose passwords the demo prints) exist and are active in a production
database. The check reads the database only under ``--deploy`` and says nothing when the database
cannot be reached (Django's own checks report that).
"""

import contextlib

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from compliance.audit.actions import AuditAction
from compliance.audit.models import AuditEvent
from compliance.audit.record import audit_record
from drpanel.dbroles import runtime_role_problems
from drpanel.scrub import scrub


@register(Tags.security, deploy=True)
def demo_users_in_production(app_configs=None, **kwargs) -> list[Error]:
    if not settings.PRODUCTION:
        return []
    from django.contrib.auth import get_user_model

    from drpanel.demo import DEMO_USERS

    try:
        found = sorted(get_user_model().objects.filter(
            username__in=list(DEMO_USERS), email__in=[f"{name}@example.com" for name in DEMO_USERS],
            is_active=True).values_list("username", flat=True))
    except DatabaseError:
        return []
    if not found:
        return []
    return [Error(f"the demo's users are active in this production database: {', '.join(found)}",
                  hint="deactivate or delete them (their passwords were printed by `manage.py demo`)",
                  id="drpanel.E001")]


@register(Tags.security)
def runtime_role_in_production(app_configs=None, **kwargs) -> list[Error]:
    """In production, the role the panel runs as must not be able to bypass the audit log."""
    if not settings.PRODUCTION:
        return []
    try:
        problems = runtime_role_problems()
    except DatabaseError as exc:
        # Fail closed: a panel that started unchecked would never be checked again.
        return [Error(f"the runtime database role could not be checked: {scrub(str(exc).strip())}",
                      hint="the panel starts in production only once its database role is known to be safe",
                      id="drpanel.E007")]
    return [Error(problem.message, hint=problem.hint, id=problem.id) for problem in problems]


def refuse_unsafe_start(process: str) -> None:
    """Stop a production process whose runtime role is unsafe, with the reasons; audited when it can be.

    The web process calls this when its WSGI application loads (gunicorn then refuses to boot);
    management commands get the same errors from the system check.
    """
    errors = runtime_role_in_production()
    if not errors:
        return
    # The refusal stands even when it cannot be recorded (the database is unreachable).
    with contextlib.suppress(DatabaseError):
        audit_record(actor=None, action=AuditAction.PANEL_START_REFUSED, outcome=AuditEvent.Outcome.DENIED,
                     object_type="drpanel.process", object_id=process,
                     details={"process": process, "checks": [f"{e.id}: {e.msg}" for e in errors]})
    raise ImproperlyConfigured("refusing to start: " + "; ".join(f"{e.id} {e.msg} (hint: {e.hint})"
                                                                 for e in errors))
