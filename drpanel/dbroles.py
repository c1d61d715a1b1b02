"""The panel's two database roles: the migration role owns the tables, the runtime role uses them.

- The **migration role** (``DRPANEL_MIGRATE_DATABASE_URL``) runs ``manage.py migrate``: it creates and
  owns every table, so it alone (or a superuser) can alter them or disable their triggers.
- The **runtime role** (``DATABASE_URL``) is what the web processes and the workers connect as. It
  gets SELECT, INSERT, UPDATE and DELETE on the panel's tables, USAGE and SELECT on their sequences,
  SELECT only on ``django_migrations``, and on the audit table SELECT and INSERT only
  (``grant_sql``). It is no superuser, owns nothing, is no member of the owner, and cannot set
  ``session_replication_role``: it cannot update, delete, truncate, alter the audit table or
  silence its triggers (which fire ``ALWAYS``, in every replication mode).

``runtime_role_problems`` says what is wrong with the role a connection runs as (the system
check ``drpanel.checks.runtime_role_in_production`` refuses a production start on any);
``runtime_role_grant`` gives a role exactly its rights, audited; ``migration_connection`` points
the default connection at the migration role for the duration of ``migrate``.
"""

import contextlib
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from compliance.audit.actions import AuditAction
from compliance.audit.models import AuditEvent
from compliance.audit.record import audit_record

AUDIT_TABLE = AuditEvent._meta.db_table
MIGRATIONS_TABLE = "django_migrations"
# What the runtime role must not hold on the audit table (it may SELECT and INSERT).
AUDIT_FORBIDDEN_PRIVILEGES = ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


class RuntimeRoleError(Exception):
    """A role cannot be made the runtime role (it is the caller itself, a superuser, or does not exist)."""


@dataclass(frozen=True)
class RoleProblem:
    """One reason a role is unsafe as the panel's runtime role in production."""

    id: str
    message: str
    hint: str


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def grant_sql(role: str, *, schema: str = "public") -> list[str]:
    """The statements, run by the tables' owner, that give ``role`` exactly the runtime role's rights.

    Idempotent: everything is revoked first, so running them again after each migration (new
    tables) also takes back anything granted by hand.
    """
    r, s = quote_ident(role), quote_ident(schema)
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"REVOKE CREATE ON SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"REVOKE UPDATE, DELETE ON {s}.{quote_ident(AUDIT_TABLE)} FROM {r}",
        f"REVOKE INSERT, UPDATE, DELETE ON {s}.{quote_ident(MIGRATIONS_TABLE)} FROM {r}",
    ]


_ROLE_SQL = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolreplication, r.rolcreaterole,
       pg_get_userbyid(t.relowner), COALESCE(pg_has_role(r.oid, t.relowner, 'MEMBER'), false),
       ARRAY(SELECT p FROM unnest(%s::text[]) AS p
             WHERE t.oid IS NOT NULL AND has_table_privilege(r.oid, t.oid, p))
FROM pg_roles r LEFT JOIN pg_class t ON t.oid = to_regclass(%s)
WHERE r.rolname = current_user
"""


def runtime_role_problems(using: str = DEFAULT_DB_ALIAS) -> list[RoleProblem]:
    """What makes the role of connection ``using`` unsafe as the runtime role (empty: it is safe).

    Reads only the catalogs, which every role may read. Before the first migration there is no
    audit table yet: then only the role's own attributes are checked.
    """
    conn = connections[using]
    with conn.cursor() as cursor:
        cursor.execute(_ROLE_SQL, [list(AUDIT_FORBIDDEN_PRIVILEGES), AUDIT_TABLE])
        role, superuser, bypassrls, replication, createrole, owner, acts_as_owner, privileges = cursor.fetchone()
        can_set_replication_role = False
        if conn.pg_version >= 150000:
            # SET on a superuser-only parameter can be granted since PostgreSQL 15.
            cursor.execute("SELECT has_parameter_privilege(current_user, 'session_replication_role', 'SET')")
            can_set_replication_role = cursor.fetchone()[0]
    name = f"the runtime database role {role!r}"
    separate = ("let a separate migration role own the tables (DRPANEL_MIGRATE_DATABASE_URL) and run the panel "
                "as a plain role given its rights by `manage.py grant_runtime_role` "
                "(docs/administrator.md: database roles)")
    problems = []
    if superuser:
        problems.append(RoleProblem("drpanel.E002", f"{name} is a superuser: it could silence the audit log's "
                                    "triggers and rewrite the log", separate))
    if owner and acts_as_owner and not superuser:
        which = "owns the audit table" if owner == role else f"may act as the audit table's owner {owner!r}"
        problems.append(RoleProblem("drpanel.E003", f"{name} {which}: it could alter the table or disable its "
                                    "triggers", separate))
    attributes = [flag for flag, held in (("BYPASSRLS", bypassrls), ("REPLICATION", replication),
                                          ("CREATEROLE", createrole)) if held]
    if attributes and not superuser:
        problems.append(RoleProblem("drpanel.E004", f"{name} has {', '.join(attributes)}",
                                    f"ALTER ROLE {quote_ident(role)} NOBYPASSRLS NOREPLICATION NOCREATEROLE"))
    if privileges and not superuser:
        problems.append(RoleProblem("drpanel.E005", f"{name} holds {', '.join(privileges)} on the audit table "
                                    "(it may only SELECT and INSERT there)",
                                    "run `manage.py grant_runtime_role` as the migration role"))
    if can_set_replication_role and not superuser:
        problems.append(RoleProblem("drpanel.E006", f"{name} may set session_replication_role",
                                    f"REVOKE SET ON PARAMETER session_replication_role FROM {quote_ident(role)}"))
    return problems


@contextlib.contextmanager
def migration_connection(alias: str = DEFAULT_DB_ALIAS):
    """For the block, the connection ``alias`` runs as the migration role (``DRPANEL_MIGRATE_DATABASE_URL``).

    The settings are not touched: only this connection's own copy, restored (and the connection
    closed) when the block ends, so the process is back on the runtime role.
    """
    conn = connections[alias]
    runtime = conn.settings_dict
    conn.close()
    # The database stays the connection's own (the settings check that both URLs name the same one;
    # a test run's connection names its test database, which must never become the real one).
    conn.settings_dict = {**runtime, **{key: settings.MIGRATE_DATABASE[key]
                                        for key in ("USER", "PASSWORD", "HOST", "PORT", "OPTIONS")}}
    try:
        yield conn
    finally:
        conn.close()
        conn.settings_dict = runtime


def runtime_role_grant(*, actor=None, role: str) -> list[str]:
    """Give ``role`` exactly the runtime role's rights, on the tables the current role owns; audited.

    Run as the migration role (the owner of the tables). Refuses to strip the caller's own rights,
    to "limit" a superuser (nothing limits one), and an unknown role. Returns the statements run.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_schema(), "
                       "(SELECT rolsuper FROM pg_roles WHERE rolname = %s)", [role])
        me, schema, superuser = cursor.fetchone()
        if role == me:
            raise RuntimeRoleError(f"{role!r} is the role running this command: grant the runtime role's rights "
                                   "as the migration role (DRPANEL_MIGRATE_DATABASE_URL), to another role")
        if superuser is None:
            raise RuntimeRoleError(f"there is no database role {role!r} (CREATE ROLE {quote_ident(role)} LOGIN)")
        if superuser:
            raise RuntimeRoleError(f"{role!r} is a superuser: no grant limits it; run the panel as a plain role")
        statements = grant_sql(role, schema=schema)
        for statement in statements:
            cursor.execute(statement)
        audit_record(actor=actor, action=AuditAction.DATABASE_RUNTIME_ROLE_GRANTED, object_type="database.role",
                     object_id=role, object_repr=role,
                     details={"schema": schema, "granted_by": me, "audit_table": "SELECT, INSERT"})
    return statements
