"""The audit log stays append-only against the panel's own runtime database role (issue 12, item 6).

Every test uses a real non-superuser role, created on the test database with exactly the rights
``drpanel.dbroles.grant_sql`` gives the runtime role (the test run's superuser owns the tables:
it plays the migration role). As that role, each attack on the audit table fails with
PostgreSQL's own refusal, the log is unchanged and still verifies (a verification that is itself
audited); appending through ``audit_record`` works, and a real worker connected as that role
takes a backup. The triggers fire ``ALWAYS``: not even the
owner in ``session_replication_role = replica`` gets past them. ``migrate`` runs as the
migration role and grants the runtime role its rights; in production a superuser runtime role
is refused at start (check, check --deploy, a worker, the web process), the web refusal audited.
"""

import subprocess
import sys

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from backups.runs import backup_request
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.audit.models import APPEND_ONLY_TRIGGERS, AuditEvent
from compliance.audit.verify import audit_verify, verify_chain
from drpanel.dbroles import AUDIT_TABLE, grant_sql, runtime_role_problems
from tests.backup_fixtures import keys_env, primary, source_db, system, test_keys  # noqa: F401 - fixtures
from tests.drpanel.test_settings import manage, production_env
from tests.role_support import database_role, panel_connected_as, superuser_url
from tests.support import ROOT, rq_workers, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

# Literal SQL (the audit table is compliance_auditevent, AUDIT_TABLE), as an attacker would type it.
ATTACKS = {
    "update": "UPDATE compliance_auditevent SET actor_username = 'nobody'",
    "delete": "DELETE FROM compliance_auditevent",
    "truncate": "TRUNCATE compliance_auditevent",
    "alter table": "ALTER TABLE compliance_auditevent DROP COLUMN prev_hash",
    "disable trigger": "ALTER TABLE compliance_auditevent DISABLE TRIGGER compliance_auditevent_no_truncate",
    "disable all triggers": "ALTER TABLE compliance_auditevent DISABLE TRIGGER ALL",
    "replica mode": "SET session_replication_role = replica",
    "become the owner": "SET ROLE postgres",
    "drop table": "DROP TABLE compliance_auditevent",
}


def log_state() -> tuple[int, str | None]:
    head = AuditEvent.objects.order_by("-seq").values_list("hash", flat=True).first()
    return AuditEvent.objects.count(), head


@pytest.fixture
def events():
    for n in range(3):
        audit_record(actor=None, action=AuditAction.AUDIT_EXPORTED, details={"n": n})
    return log_state()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_runtime_role_cannot_change_or_unprotect_the_audit_table(runtime_role, events, attack):
    with psycopg.connect(runtime_role.url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(ATTACKS[attack])
        # Had the attack passed (a SET, a SET ROLE), the delete after it would be the proof.
        conn.execute("DELETE FROM compliance_auditevent")
    message = str(refused.value)
    assert "permission denied" in message or "must be owner" in message, message
    assert runtime_role.password not in message
    assert log_state() == events
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                       [AUDIT_TABLE])
        assert dict(cursor.fetchall()) == dict.fromkeys(APPEND_ONLY_TRIGGERS, "A")
    # The chain still verifies as the runtime role, and that verification is itself an audit event.
    with panel_connected_as(runtime_role):
        result = audit_verify(actor=None, via="test")
    assert result.ok and result.count == events[0]
    assert AuditEvent.objects.order_by("-seq").first().action == AuditAction.AUDIT_VERIFIED


def test_the_runtime_role_appends_through_audit_record_and_the_chain_verifies(runtime_role, events):
    with panel_connected_as(runtime_role):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == runtime_role.name
        assert runtime_role_problems() == []
        event = audit_record(actor=None, action=AuditAction.AUDIT_EXPORTED, details={"as": "runtime"})
        result = verify_chain()
    assert event.seq == events[0] + 1 and result.ok and result.count == event.seq and result.head_hash == event.hash


def test_a_real_worker_running_as_the_runtime_role_takes_a_backup_and_audits_it(
        runtime_role, operator, system, primary, test_keys, redis_conn, tmp_path):  # noqa: F811 - fixtures
    """The runtime role's rights are enough for the panel's work (here a full backup, start to audit)."""
    env = {**keys_env(test_keys), "DATABASE_URL": runtime_role.url}
    with rq_workers(["backup"], log_dir=tmp_path / "logs", env=env):
        run = backup_request(actor=operator, system=system, kind="full")
        wait_for(lambda: type(run).objects.get(pk=run.pk).state not in ("queued", "running"), 120, "the backup")
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert AuditEvent.objects.filter(action=AuditAction.BACKUP_SUCCEEDED, details__run=str(run.id)).exists()
    assert verify_chain().ok


def test_the_triggers_fire_always_even_for_the_owner_in_replica_mode(events):
    for statement in ("DELETE FROM compliance_auditevent", "UPDATE compliance_auditevent SET outcome = 'denied'",
                      "TRUNCATE compliance_auditevent"):
        with psycopg.connect(superuser_url()) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute("SET session_replication_role = replica")
            conn.execute(statement)
        assert "the audit log is append-only" in str(refused.value)
    assert log_state() == events


@pytest.mark.parametrize(("attributes", "extra_sql", "expected"), [
    # A member of the owner may SET ROLE to it, and inherits its rights on the table.
    ("", ("GRANT postgres TO {role}",), ["drpanel.E003", "drpanel.E005"]),
    ("BYPASSRLS", (), ["drpanel.E004"]),
    ("REPLICATION", (), ["drpanel.E004"]),
    ("CREATEROLE", (), ["drpanel.E004"]),
    ("", (f"GRANT UPDATE, TRUNCATE ON {AUDIT_TABLE} TO {{role}}",), ["drpanel.E005"]),
    ("", ("GRANT SET ON PARAMETER session_replication_role TO {role}",), ["drpanel.E006"]),
])
def test_each_unsafe_runtime_role_is_named(attributes, extra_sql, expected):
    with database_role(attributes, extra_sql=extra_sql) as role, panel_connected_as(role):
        problems = runtime_role_problems()
    assert [problem.id for problem in problems] == expected
    assert role.name in problems[0].message and problems[0].hint
    assert [problem.id for problem in runtime_role_problems()] == ["drpanel.E002"], "the test run's superuser"


def test_migrate_runs_as_the_migration_role_and_grants_the_runtime_role_its_rights():
    with database_role(grant=False) as role:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input"],
            env=worker_env(DATABASE_URL=role.url, DRPANEL_MIGRATE_DATABASE_URL=superuser_url()),
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Granted the runtime role '{role.name}'" in result.stdout
        with connection.cursor() as cursor:
            cursor.execute("SELECT p, has_table_privilege(%s, %s, p) FROM unnest(%s::text[]) AS p",
                           [role.name, AUDIT_TABLE, ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"]])
            assert dict(cursor.fetchall()) == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False,
                                               "TRUNCATE": False, "TRIGGER": False}
            cursor.execute("SELECT p, has_table_privilege(%s, 'restores_restorerun', p) FROM unnest(%s::text[]) AS p",
                           [role.name, ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"]])
            assert dict(cursor.fetchall()) == {"SELECT": True, "INSERT": True, "UPDATE": True, "DELETE": True,
                                               "TRUNCATE": False}
            cursor.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass", [AUDIT_TABLE])
            assert cursor.fetchone()[0] != role.name
        granted = AuditEvent.objects.get(action=AuditAction.DATABASE_RUNTIME_ROLE_GRANTED)
        assert granted.object_id == role.name and granted.details["audit_table"] == "SELECT, INSERT"
        with panel_connected_as(role):
            assert runtime_role_problems() == []


def test_grant_runtime_role_refuses_the_caller_itself_a_superuser_and_prints_its_sql(capsys):
    me = connection.settings_dict["USER"] or "postgres"
    with pytest.raises(CommandError, match="is the role running this command"):
        call_command("grant_runtime_role", me)
    with database_role("SUPERUSER", grant=False) as role, pytest.raises(CommandError, match="is a superuser"):
        call_command("grant_runtime_role", role.name)
    with pytest.raises(CommandError, match="there is no database role"):
        call_command("grant_runtime_role", "drpanel_no_such_role")
    assert not AuditEvent.objects.filter(action=AuditAction.DATABASE_RUNTIME_ROLE_GRANTED).exists()
    call_command("grant_runtime_role", "panel_runtime", "--sql")
    printed = capsys.readouterr().out
    assert printed == ";\n".join(grant_sql("panel_runtime")) + ";\n"
    assert f'REVOKE UPDATE, DELETE ON "public"."{AUDIT_TABLE}" FROM "panel_runtime"' in printed


# --- production refuses to start with a superuser runtime role -------------------------------

@pytest.fixture
def production(tmp_path):
    base = worker_env()
    env = {**production_env(tmp_path), "REDIS_URL": base["REDIS_URL"], "DRPANEL_SERVICES": "auto",
           "DRPANEL_VAR_DIR": str(tmp_path / "var")}
    env.pop("DEBUG", None)
    return env


def start_web(**env) -> subprocess.CompletedProcess:
    """What gunicorn does when it boots a worker: import the WSGI application."""
    full_env = {**worker_env(), **env}
    full_env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return subprocess.run([sys.executable, "-c", "import drpanel.wsgi"], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_production_refuses_to_start_with_a_superuser_runtime_role(production):
    env = {**production, "DATABASE_URL": superuser_url()}
    before = log_state()
    for args in (("check",), ("check", "--deploy"), ("rqworker", "--burst", "default")):
        result = manage(*args, **env)
        assert result.returncode != 0, args
        assert "drpanel.E002" in result.stderr and "is a superuser" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert log_state() == before, "a system check wrote to the database"

    result = start_web(**env)
    assert result.returncode != 0
    assert "refusing to start: drpanel.E002" in result.stderr
    assert "docs/administrator.md: database roles" in result.stderr
    refused = AuditEvent.objects.get(action=AuditAction.PANEL_START_REFUSED)
    assert refused.outcome == AuditEvent.Outcome.DENIED and refused.object_id == "web"
    assert refused.details["checks"][0].startswith("drpanel.E002")
    for secret in (env["DRPANEL_KEYS"].split(":", 1)[1], "roduction-secret-key"):
        assert secret not in result.stderr + str(refused.details)


def test_production_starts_with_the_runtime_role(production, runtime_role):
    env = {**production, "DATABASE_URL": runtime_role.url}
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    result = start_web(**env)
    assert result.returncode == 0, result.stderr
    assert not AuditEvent.objects.filter(action=AuditAction.PANEL_START_REFUSED).exists()


def test_a_migration_role_on_another_database_stops_start_up_with_one_line():
    result = manage("check", DRPANEL_MIGRATE_DATABASE_URL="postgresql://owner@127.0.0.1:5432/some_other_database")
    assert result.returncode == 2
    assert result.stderr.strip() == ("drpanel: DRPANEL_MIGRATE_DATABASE_URL must name the same database as "
                                     "DATABASE_URL")
