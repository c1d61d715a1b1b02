"""A backup's side of the PostgreSQL client: libpq environments, connecting, server facts, row counts.

The pg_dump used must be at least the server's major version (an older one refuses, or
misses features); ``drpanel.pgbin.find_tool`` chooses it (the one closest to the server's
major among those that fit: its archives are the most widely readable by pg_restore).
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from drpanel.pgbin import ToolError

__all__ = ["ToolError", "connect", "count_rows", "libpq_env", "list_tables", "server_facts"]

# libpq connection parameters and the environment variables libpq reads them from.
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL", "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME", "options": "PGOPTIONS", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "service": "PGSERVICE", "gssencmode": "PGGSSENCMODE", "channel_binding": "PGCHANNELBINDING",
}


def libpq_env(url: str) -> dict[str, str]:
    """The environment that makes libpq tools connect like ``url`` (keeps passwords out of argv)."""
    try:
        params = conninfo_to_dict(url)
    except Exception:
        raise ToolError("the system's database reference does not hold a valid libpq URL") from None
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    for key, value in params.items():
        name = _LIBPQ_ENV.get(key)
        if name and value is not None:
            env[name] = str(value)
    return env


def connect(url: str, **kwargs):
    """A connection to the system's database; a failure is a ``ToolError`` that names no password."""
    try:
        return psycopg.connect(url, connect_timeout=15, **kwargs)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # libpq errors name host and user, never the password; cut anything after "password".
        first = first.split("password")[0].rstrip(" :") if "password" in first.lower() else first
        raise ToolError(f"cannot connect to the system's database: {first}") from None


def server_facts(conn) -> dict:
    row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                       "current_database(), pg_database_size(current_database())").fetchone()
    return {"server_version": row[0], "server_version_num": row[1], "server_major": row[1] // 10000,
            "database": row[2], "database_size": row[3]}


TABLES_SQL = """
SELECT n.nspname, c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
  AND n.nspname NOT LIKE 'pg_temp%%'
ORDER BY n.nspname, c.relname
"""


def list_tables(conn) -> list[tuple[str, str, int]]:
    return [(s, t, size) for s, t, size in conn.execute(TABLES_SQL).fetchall()]


def count_rows(conn, tables) -> list[dict]:
    """Exact ``count(*)`` of each table, in the connection's current transaction (snapshot)."""
    counts = []
    for schema, table, _size in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts.append({"schema": schema, "table": table, "rows": conn.execute(query).fetchone()[0]})
    return counts
