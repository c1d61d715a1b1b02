"""Real database roles on the test database, for tests of the panel's runtime role.

A role belongs to the whole PostgreSQL server, not to one database, and the server is shared by
xdist workers and parallel checkouts: each role gets a random name and is dropped, with every
right it was given, when the block ends. Roles are made and granted by the test run's own
(superuser) role, which owns the test database's tables: it plays the migration role.
"""

import contextlib
import os
import secrets
from dataclasses import dataclass

import psycopg
from django.db import connection
from psycopg.conninfo import make_conninfo

from drpanel import runtime
from drpanel.dbroles import grant_sql, quote_ident


@dataclass(frozen=True)
class Role:
    """A login role on the test database: its name, its password and the URL the panel would use."""

    name: str
    password: str
    url: str


def superuser_url() -> str:
    """The test database as the test run's own role (a superuser, owner of every table)."""
    return runtime.with_database_name(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])


@contextlib.contextmanager
def database_role(attributes: str = "", *, grant: bool = True, extra_sql: tuple[str, ...] = ()):
    """A fresh ``LOGIN`` role (plus ``attributes``); ``grant``: with exactly the runtime role's rights.

    ``extra_sql`` runs after the grants, as the superuser, with ``{role}`` standing for the quoted name.
    """
    name = f"drpanel_test_{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(18)
    quoted = quote_ident(name)
    url = runtime.with_database_name(make_conninfo(os.environ["DATABASE_URL"], user=name, password=password),
                                     connection.settings_dict["NAME"])
    with psycopg.connect(superuser_url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {quoted} LOGIN PASSWORD '{password}' {attributes}")
        for statement in (grant_sql(name) if grant else []) + [sql.format(role=quoted) for sql in extra_sql]:
            conn.execute(statement)
    try:
        yield Role(name, password, url)
    finally:
        with psycopg.connect(superuser_url(), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
            conn.execute(f"DROP OWNED BY {quoted}")
            conn.execute(f"DROP ROLE {quoted}")


@contextlib.contextmanager
def panel_connected_as(role: Role):
    """For the block, this process's default connection runs as ``role`` (as the panel would)."""
    runtime_settings = connection.settings_dict
    connection.close()
    connection.settings_dict = {**runtime_settings, "USER": role.name, "PASSWORD": role.password}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict = runtime_settings
