"""Connections to a target's server: to its maintenance database, and the conninfo and environment that
carry a password to a client tool without putting it on a command line.
"""

import os
import time
from collections.abc import Iterable

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from restores.pg.errors import PgOpsError

MAINTENANCE_DATABASE = "postgres"


def database_name(url: str) -> str:
    """The database a libpq URL names (``<db>``)."""
    name = conninfo_to_dict(url).get("dbname")
    if not name:
        raise PgOpsError("the target's database URL names no database")
    return name


def conninfo(url: str, dbname: str) -> str:
    """The conninfo of ``url`` with another database name."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def connect(url: str, dbname: str = MAINTENANCE_DATABASE) -> psycopg.Connection:
    """An autocommit connection to ``dbname`` (default: the maintenance database) on the target's server."""
    try:
        return psycopg.connect(conninfo(url, dbname), autocommit=True, connect_timeout=10,
                               application_name="drpanel-restore")
    except psycopg.Error as exc:
        raise PgOpsError(f"cannot connect to {dbname!r} on the target's server: {first_line(exc)}") from None


def client_args(url: str, dbname: str) -> tuple[str, dict]:
    """A conninfo without the password for a command line, and the environment carrying it."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    password = params.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    env.setdefault("PGAPPNAME", "drpanel-restore")
    return make_conninfo(**params), env


def first_line(exc: BaseException) -> str:
    """The first line of a database error, without the rest of its context."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = str(exc).strip().splitlines()
    return (primary or (lines[0] if lines else type(exc).__name__))[:300]


def server_version_num(url: str) -> int:
    """The target server's ``server_version_num`` (e.g. 150020)."""
    with connect(url) as conn:
        return conn.info.server_version


def existing_databases(conn: psycopg.Connection, names: Iterable[str]) -> set[str]:
    """Which of ``names`` exist on the server."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(names)]).fetchall()
    return {row[0] for row in rows}


def allow_connections(conn: psycopg.Connection, name: str, allow: bool) -> None:
    """Let ``name`` accept connections again, or refuse new ones."""
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def terminate_sessions(conn: psycopg.Connection, names: list[str], *, wait: float = 5.0) -> int:
    """Signal every other session of ``names`` at once, then wait (polling every 2 ms) until they are gone.

    Not ``pg_terminate_backend(pid, timeout)``: it waits in 100 ms steps, one session after
    the other; and ALTER DATABASE's own wait for sessions also sleeps in 100 ms steps.
    """
    terminated = conn.execute(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity "
        "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()) t WHERE gone", [names]).fetchone()[0]
    if terminated:
        deadline = time.perf_counter() + wait
        while time.perf_counter() < deadline:
            remaining = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
                                     "AND pid <> pg_backend_pid()", [names]).fetchone()[0]
            if not remaining:
                break
            time.sleep(0.002)
    return terminated
