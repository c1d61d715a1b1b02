"""Creating and dropping the databases a restore makes beside ``<db>``: the side database it restores into, and
the clean-up of copies (only names that follow the copy patterns are ever dropped).
"""

import contextlib
from collections.abc import Iterable

import psycopg
from psycopg import sql

from restores.pg.archive import Source
from restores.pg.connect import (
    allow_connections,
    connect,
    database_name,
    existing_databases,
    first_line,
    terminate_sessions,
)
from restores.pg.errors import PgOpsError, UnsafeDatabaseName
from restores.pg.names import CopyDatabase, CopyKind, copy_name, parse_copy_name, run_tag
from restores.pg.restore import RestoreResult, restore_archive


def create_side_database(url: str, run_id) -> str:
    """Create the empty side database ``<db>__restore_<tag>`` and return its name.

    It takes ``<db>``'s encoding, collation, ctype and locale provider (and its owner when
    the URL's role may grant it), from ``template0``. Raises ``PgOpsError`` if it already
    exists (an earlier attempt of the same run: drop it first with ``drop_copy``).
    """
    database = database_name(url)
    side = copy_name(database, run_id, CopyKind.SIDE)
    with connect(url) as conn:
        if existing_databases(conn, [side]):
            raise PgOpsError(f"the side database {side} already exists (an earlier attempt of this run?)")
        row = conn.execute(
            "SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba), "
            "pg_has_role(current_user, d.datdba, 'MEMBER') FROM pg_database d WHERE d.datname = %s",
            [database]).fetchone()
        parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(side))]
        if row is not None:
            info, encoding, owner, may_own = row
            parts.append(sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(encoding), sql.Literal(info["datcollate"]), sql.Literal(info["datctype"])))
            provider = info.get("datlocprovider")
            locale = info.get("datlocale") or info.get("daticulocale")
            if provider == "i" and locale:
                parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
            elif provider == "b" and locale:
                parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale)))
            if may_own:
                parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
            if info.get("datconnlimit", -1) != -1:
                parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(info["datconnlimit"])))
        try:
            conn.execute(sql.SQL(" ").join(parts))
            if row is not None:
                _copy_database_acl(conn, database, side)
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(side)))
            raise PgOpsError(f"cannot create the side database {side}: {first_line(exc)}") from None
    return side


def _copy_database_acl(conn: psycopg.Connection, source: str, target: str) -> None:
    """Give ``target`` the database-level grants of ``source`` (pg_dump carries them only with --create).

    Without this, a ``REVOKE CONNECT ... FROM PUBLIC`` on ``<db>`` would quietly disappear
    with the swap.
    """
    rows = conn.execute(
        "SELECT a.privilege_type, a.is_grantable, a.grantee = 0, pg_get_userbyid(a.grantee) "
        "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", [source]).fetchall()
    if not rows:
        return  # the default privileges, which the new database already has
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(target)))
    for privilege, grantable, public, grantee in rows:
        conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(privilege), sql.Identifier(target), sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))


def restore_to_side_database(url: str, run_id, source: Source, **options) -> RestoreResult:
    """Create ``<db>__restore_<tag>`` and restore ``source`` into it (see ``restore_archive``).

    On any failure (bad archive, pg_restore error, a failing stream, an interruption) the
    side database is dropped before the exception propagates, so ``<db>`` is untouched and
    nothing is left behind.
    """
    side = create_side_database(url, run_id)
    try:
        return restore_archive(url, side, source, **options)
    except BaseException:
        with contextlib.suppress(PgOpsError):
            drop_copy(url, run_id, CopyKind.SIDE)
        raise


def drop_copy_on(conn: psycopg.Connection, name: str, live: str) -> bool:
    """Drop the copy ``name`` through ``conn`` (never ``live`` nor a name outside the copy patterns)."""
    copy = parse_copy_name(name)
    if copy is None or name == live or copy.database != live:
        raise UnsafeDatabaseName(f"refusing to drop {name!r}: only copies of {live} "
                                 "(<db>__restore_/__pre_/__failed_<tag>) are ever dropped")
    if not existing_databases(conn, [name]):
        return False
    try:
        if conn.info.server_version >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        else:
            allow_connections(conn, name, False)
            terminate_sessions(conn, [name])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise PgOpsError(f"cannot drop {name}: {first_line(exc)}") from None
    return True


def drop_copy(url: str, run_id, kind: CopyKind | str) -> bool:
    """Drop ``<db>__<kind>_<tag>`` if it exists (terminating its sessions); True if it was dropped."""
    database = database_name(url)
    with connect(url) as conn:
        return drop_copy_on(conn, copy_name(database, run_id, kind), database)


def drop_database_copy(url: str, name: str) -> bool:
    """Drop a copy found by ``list_copies``/``find_orphans``; refuses any other name."""
    with connect(url) as conn:
        return drop_copy_on(conn, name, database_name(url))


def list_copies(url: str) -> list[CopyDatabase]:
    """Every side database and pre/failed copy of the URL's database on its server."""
    database = database_name(url)
    with connect(url) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname",
            [database + "__"]).fetchall()]
    copies = [parse_copy_name(name) for name in names]
    return [c for c in copies if c is not None and c.database == database]


def find_orphans(url: str, *, keep: Iterable = ()) -> list[CopyDatabase]:
    """Copies whose run is not in ``keep`` (run ids or tags of runs still running or within their window)."""
    kept = {run_tag(item) for item in keep}
    return [copy for copy in list_copies(url) if copy.tag not in kept]
