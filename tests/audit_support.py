"""Helpers for the audit log's tests: tampering as a superuser, and the offline verifier as a stranger would run it."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from django.db import connection, transaction

from compliance.audit import audit_record
from compliance.audit.actions import register_action
from compliance.audit.models import APPEND_ONLY_TRIGGERS
from compliance.models import AuditEvent

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "compliance" / "verify_export.py"
TABLE = AuditEvent._meta.db_table

# Actions only the audit log's own tests write: the chain, its pages and its exports do not care which.
TEST_ACTIONS = {
    "test.event": "a test event",
    "test.other": "another test event, to filter by action",
    "test.readme": "the worked example of a hash in docs/auditor.md",
    "test.awkward": "texts PostgreSQL would change (NUL, surrogates, IPv4-mapped addresses)",
    "test.fast": "the fast row encoding against the writer's",
    "test.redact": "secrets in details",
    "test.large": "large details",
    "test.detail": "the detail page",
    "test.concurrent": "concurrent writer processes",
}
for _action, _description in TEST_ACTIONS.items():
    register_action(_action, _description)


def record(count: int, action: str = "test.event", **kwargs) -> list[AuditEvent]:
    events = []
    for n in range(count):
        with transaction.atomic():
            events.append(audit_record(actor=None, action=action, details={"n": n}, **kwargs))
    return events


@contextlib.contextmanager
def triggers_disabled():
    """What an attacker with the database superuser could do (the test role is a superuser)."""
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
            # The append-only triggers fire ALWAYS (compliance/0007), as they did before.
            for trigger in APPEND_ONLY_TRIGGERS:
                cursor.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {trigger}")


def tamper(sql: str, params=None) -> None:
    with triggers_disabled(), connection.cursor() as cursor:
        cursor.execute(sql.replace("{table}", TABLE), params)


def clean_env() -> dict:
    """No Django, no database, no panel settings: what an auditor's laptop has."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": "/nonexistent"}


def run_verifier(export: Path, *keys: Path, digest: Path | None = None) -> subprocess.CompletedProcess:
    """``python -I compliance/verify_export.py EXPORT --public-key K…`` with a clean environment."""
    args = [sys.executable, "-I", str(VERIFIER), str(export)]
    for key in keys:
        args += ["--public-key", str(key)]
    if digest is not None:
        args += ["--digest", str(digest)]
    return subprocess.run(args, env=clean_env(), cwd=Path(export).parent, capture_output=True, text=True,
                          timeout=120)


def force_audit_failures() -> None:
    """From now until the test's transaction ends, the audit table refuses every insert."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE FUNCTION test_refuse_audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit storage unavailable (forced by the test)'; END $$;
            CREATE TRIGGER test_refuse_audit_insert BEFORE INSERT ON {TABLE}
                FOR EACH ROW EXECUTE FUNCTION test_refuse_audit_insert();
        """)
