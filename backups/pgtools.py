"""PostgreSQL client tools: choosing a pg_dump that fits the server, libpq environments, row counts.

The pg_dump used must be at least the server's major version (an older one refuses, or
misses features). Candidates, in order: ``PG_BIN_DIR`` (when set), Debian's
``/usr/lib/postgresql/*/bin``, then the PostgreSQL bundled in the ``pgserver`` wheel. Among
those that fit, the one closest to the server's major wins (its archives are the most
widely readable by pg_restore).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# libpq connection parameters and the environment variables libpq reads them from.
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL", "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME", "options": "PGOPTIONS", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "service": "PGSERVICE", "gssencmode": "PGGSSENCMODE", "channel_binding": "PGCHANNELBINDING",
}


class ToolError(Exception):
    """No suitable client tool, or the database cannot be reached; the message names no secret."""


@dataclass
class Tool:
    """One client binary and its version."""

    path: str
    major: int
    version: str


@functools.lru_cache(maxsize=64)
def _cached_version(path: str, mtime: float) -> Tool | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20, check=False).stdout
    except OSError:
        return None
    match = _VERSION.search(out)
    if not match:
        return None
    return Tool(path=path, major=int(match.group(1)), version=out.strip())


def tool_version(path: str) -> Tool | None:
    """The version a client binary reports (cached per path and modification time)."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _cached_version(path, mtime)


def candidate_dirs() -> list[str]:
    dirs = []
    if settings.PG_BIN_DIR:
        dirs.append(settings.PG_BIN_DIR)
    dirs.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin")))
    try:
        import pgserver

        dirs.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    return dirs


def find_tool(name: str, server_major: int) -> Tool:
    """The ``name`` binary (pg_dump, pg_restore, psql) fitting a server of ``server_major``."""
    seen = []
    fitting = []
    for directory in candidate_dirs():
        path = os.path.join(directory, name)
        if not os.access(path, os.X_OK):
            continue
        tool = tool_version(path)
        if tool is None:
            continue
        seen.append(f"{tool.major} ({path})")
        if tool.major >= server_major:
            if settings.PG_BIN_DIR and directory == settings.PG_BIN_DIR:
                return tool
            fitting.append(tool)
    if not fitting:
        found = ", ".join(seen) or "none"
        raise ToolError(f"no {name} of version {server_major} or newer was found for this PostgreSQL {server_major} "
                        f"server (found: {found}); install the PostgreSQL {server_major} client or set PG_BIN_DIR")
    return min(fitting, key=lambda t: t.major)


def libpq_env(url: str) -> dict[str, str]:
    """The environment that makes libpq tools connect like ``url`` (keeps passwords out of argv)."""
    from psycopg.conninfo import conninfo_to_dict

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
    import psycopg

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
    from psycopg import sql

    counts = []
    for schema, table, _size in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts.append({"schema": schema, "table": table, "rows": conn.execute(query).fetchone()[0]})
    return counts
