"""Roles before a restore: the backup's roles created on a target's server that lacks them, never altered.

A full carries its server's roles (``backups.server_roles``). Before ``pg_restore`` runs, the
worker compares them with the target's server and:

- **creates** each role the server lacks, in one transaction (all or none), with statements
  built here from the parsed globals (``psycopg.sql``; nothing from storage is executed);
- **never alters** a role that exists: each attribute or membership that differs is reported
  on the run (the step, its data, the run's results and the audit event);
- **withholds** the attributes that would hand out the server: ``SUPERUSER``, ``REPLICATION``,
  ``BYPASSRLS`` and ``CREATEROLE`` (which before PostgreSQL 16 can grant itself nearly
  everything). A role that had them is created without them and the report says so; an
  administrator grants them by hand if they are really wanted;
- grants **memberships** only to roles it created, and never in a role that is privileged on
  the target (superuser, CREATEROLE, REPLICATION, BYPASSRLS) nor in the predefined roles that
  reach the server's files or programs; a membership of an existing role is only reported;
- sets a **password** only on a role it creates, only when the backup carries one (the backup
  side's ``DRPANEL_BACKUP_ROLE_PASSWORDS``), and only a SCRAM or MD5 verifier, never clear text.
  An existing role's password is never touched;
- skips reserved ``pg_*`` names and role settings (``ALTER ROLE … SET``), and lists them.

``roles_check`` runs before the artifact is fetched: a changed globals section is refused
before the target is touched. ``roles_create`` runs once the artifact has authenticated,
right before the side database is restored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from backups.keys import get_keyring
from backups.models import Artifact
from backups.server_roles import FLAGS, PASSWORD_VERIFIER, Globals, GlobalsError, open_globals, parse_globals
from restores.pg.connect import connect, database_name, first_line
from restores.pg.errors import PgOpsError

WITHHELD = ("SUPERUSER", "REPLICATION", "BYPASSRLS", "CREATEROLE")
# Predefined roles as strong as a superuser: they read or write the server's files or run programs.
SERVER_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
DATABASE_PRIVILEGES = ("CREATE", "CONNECT", "TEMPORARY")


class RolesRefused(Exception):
    """The backup's roles cannot be trusted or created; the message is meant for the operator."""


@dataclass
class BackupRoles:
    """An artifact's sealed globals, opened: its server's roles, and its database's owner, comment and grants."""

    globals: Globals
    database: dict | None


def roles_check(artifact: Artifact) -> BackupRoles | None:
    """The artifact's roles, authenticated and parsed, or None when it carries none (``RolesRefused`` if changed)."""
    section = (artifact.manifest or {}).get("globals")
    if not section or not section.get("data"):
        return None
    try:
        document = open_globals(section, artifact_id=artifact.id, keyring=get_keyring())
        return BackupRoles(globals=parse_globals(document["globals"]), database=document["database"])
    except (GlobalsError, UnicodeDecodeError) as exc:
        raise RolesRefused(f"the artifact's roles are refused: {exc}; the target is untouched") from None


def database_adopt(url: str, side: str, database: dict | None) -> str:
    """Give the side database the backup's owner, comment and grants when ``<db>`` is new on this server.

    pg_dump carries them only with ``--create``; when ``<db>`` exists, the side database
    already took them from it (``restores.pg.databases.create_side_database``). Returns what was done.
    """
    if not database:
        return "the backup does not record its database's owner and grants"
    live = database_name(url)
    try:
        with connect(url) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [live]).fetchone():
                return f"{live} exists on the server: its owner and grants are kept"
            present = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}
            target = sql.Identifier(side)
            done = []
            with conn.transaction():
                if database.get("owner") in present:
                    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        target, sql.Identifier(database["owner"])))
                    done.append(f"owner {database['owner']}")
                if database.get("comment") is not None:
                    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        target, sql.Literal(database["comment"])))
                    done.append("comment")
                if database.get("acl") is not None:
                    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
                    for grant in database["acl"]:
                        if grant.get("privilege") not in DATABASE_PRIVILEGES:
                            continue
                        grantee = grant.get("grantee")
                        if grantee is not None and grantee not in present:
                            continue
                        conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                            sql.SQL(grant["privilege"]), target,
                            sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                            sql.SQL(" WITH GRANT OPTION") if grant.get("grantable") else sql.SQL("")))
                    done.append(f"{len(database['acl'])} grants")
    except psycopg.Error as exc:
        raise RolesRefused(f"giving {side} the backup's owner and grants failed: {first_line(exc)}") from None
    return f"{live} is new on this server: {', '.join(done) or 'nothing to set'} as in the backup"


@dataclass
class RolesReport:
    """What ``roles_create`` did and found: the run's step data and the audit event's details."""

    in_backup: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    differences: list[dict] = field(default_factory=list)
    withheld: list[dict] = field(default_factory=list)
    memberships_granted: list[dict] = field(default_factory=list)
    memberships_not_granted: list[dict] = field(default_factory=list)
    passwords_set: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.in_backup)} roles in the backup", f"{len(self.created)} created"
                 + (f" ({', '.join(self.created[:10])})" if self.created else ""),
                 f"{len(self.existing)} already on the server"]
        if self.differences:
            roles = sorted({d["role"] for d in self.differences})
            parts.append(f"{len(self.differences)} differences left as they are on {', '.join(roles[:10])}")
        if self.withheld:
            parts.append(f"{len(self.withheld)} privileges withheld")
        if self.memberships_granted:
            parts.append(f"{len(self.memberships_granted)} memberships granted")
        if self.passwords_set:
            parts.append(f"{len(self.passwords_set)} passwords set")
        return "; ".join(parts)


_ROLES_SQL = ("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, "
              "rolbypassrls, rolconnlimit FROM pg_roles")
_MEMBERS_SQL = ("SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a "
                "JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member")


def roles_create(url: str, found: Globals) -> RolesReport:
    """Create on the server of ``url`` the backup's roles it lacks (one transaction), report the rest."""
    report = RolesReport(in_backup=sorted(found.roles), skipped=list(found.skipped))
    try:
        with connect(url) as conn:
            server = {row[0]: dict(zip(("name", *FLAGS.values(), "rolconnlimit"), row, strict=True))
                      for row in conn.execute(_ROLES_SQL)}
            members = {(r, m): admin for r, m, admin in conn.execute(_MEMBERS_SQL)}
            me = server.get(conn.execute("SELECT current_user").fetchone()[0], {})
            statements = _plan(found, server, members, report)
            if statements and not (me.get("rolsuper") or me.get("rolcreaterole")):
                raise RolesRefused(f"the target's server lacks {len(report.created)} roles of the backup "
                                   f"({', '.join(report.created[:10])}) and the target's role may not create "
                                   "roles (needs CREATEROLE or superuser); the target is untouched")
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
    except psycopg.Error as exc:
        raise RolesRefused(f"creating the backup's roles failed, none was created: {first_line(exc)}") from None
    except PgOpsError as exc:
        raise RolesRefused(str(exc)) from None
    return report


def _privileged(row: dict | None) -> bool:
    return bool(row) and any(row[FLAGS[flag]] for flag in WITHHELD)


def _plan(found: Globals, server: dict, members: dict, report: RolesReport) -> list[sql.Composable]:
    statements: list[sql.Composable] = []
    for name in sorted(found.roles):
        spec = found.roles[name]
        if name.startswith("pg_"):
            report.skipped.append(f"role {name}: pg_ names are reserved")
            continue
        row = server.get(name)
        if row is not None:
            report.existing.append(name)
            for flag, wanted in sorted(spec.flags.items()):
                if row[FLAGS[flag]] != wanted:
                    report.differences.append({"role": name, "attribute": flag, "backup": wanted,
                                               "server": row[FLAGS[flag]]})
            if spec.connection_limit != row["rolconnlimit"]:
                report.differences.append({"role": name, "attribute": "CONNECTION LIMIT",
                                           "backup": spec.connection_limit, "server": row["rolconnlimit"]})
            continue
        report.created.append(name)
        options = []
        for flag in FLAGS:
            wanted = spec.flags.get(flag, flag in ("INHERIT",))
            if wanted and flag in WITHHELD:
                report.withheld.append({"role": name, "attribute": flag})
                wanted = False
            options.append(sql.SQL(flag if wanted else f"NO{flag}"))
        if spec.connection_limit != -1:
            options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
        if spec.valid_until:
            options.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(spec.valid_until)))
        if spec.password:
            if PASSWORD_VERIFIER.match(spec.password):
                options.append(sql.SQL("PASSWORD {}").format(sql.Literal(spec.password)))
                report.passwords_set.append(name)
            else:
                report.withheld.append({"role": name, "attribute": "PASSWORD (not a SCRAM or MD5 verifier)"})
        statements.append(sql.SQL("CREATE ROLE {} WITH {}").format(sql.Identifier(name), sql.SQL(" ").join(options)))
        if spec.comment is not None:
            statements.append(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name),
                                                                         sql.Literal(spec.comment)))
    created = set(report.created)
    for grant in found.memberships:
        entry = {"role": grant.role, "member": grant.member, "admin": grant.admin}
        if (grant.role, grant.member) in members:
            continue
        if grant.member not in created:
            report.memberships_not_granted.append({**entry, "why": "the member exists on the server: not altered"})
        elif grant.role not in server and grant.role not in created:
            report.memberships_not_granted.append({**entry, "why": "no such role in the backup or on the server"})
        elif grant.role in SERVER_ROLES or _privileged(server.get(grant.role)):
            report.memberships_not_granted.append({**entry, "why": "the role is privileged on the server: withheld"})
        else:
            report.memberships_granted.append(entry)
            statements.append(sql.SQL("GRANT {} TO {}{}").format(
                sql.Identifier(grant.role), sql.Identifier(grant.member),
                sql.SQL(" WITH ADMIN OPTION") if grant.admin else sql.SQL("")))
    return statements
