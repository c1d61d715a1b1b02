"""Test databases copied from a migrated template rather than migrated each time.

Migrating an empty database takes about 5 s of CPU in the xdist worker and more in PostgreSQL; ``make test``
did it once per worker on every run, all of them at once on two cores. The first process that needs the
panel's schema migrates its test database the usual way and copies it into a template named after the
migrations (``<test database>_tpl_<key>``); every later one, in this run or the next, gets its database with
``CREATE DATABASE … TEMPLATE`` (a fraction of a second) and Django's ``migrate`` then finds nothing to apply.

The key is a SHA-256 over every installed app's migration files (names and bytes) and Django's version: a
migration added, edited or renumbered makes a new template, and the older ones of the same test database go.
A PostgreSQL advisory lock serialises the first build between the xdist workers. ``DRPANEL_TEST_DB_TEMPLATE=0``
turns all of this off (Django's own set-up: migrate every test database).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import psycopg
from psycopg import sql

from drpanel.testing import template_databases as enabled  # noqa: F401 - read by conftest and the tests

TEMPLATE_INFIX = "_tpl_"


def migrations_key(directories: list[Path], django_version: str) -> str:
    """Twelve hex digits naming one set of migrations (the files of ``directories``, names and bytes)."""
    digest = hashlib.sha256(django_version.encode())
    for directory in sorted(directories):
        for path in sorted(directory.rglob("*.py")):
            digest.update(str(path.relative_to(directory.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def installed_migration_directories() -> list[Path]:
    from django.apps import apps
    from django.db.migrations.loader import MigrationLoader

    found = []
    for config in apps.get_app_configs():
        module, _ = MigrationLoader.migrations_module(config.label)
        if module is None:
            continue
        directory = Path(config.path) / module.rsplit(".", 1)[-1]
        if directory.is_dir():
            found.append(directory)
    return found


def template_name(test_database: str, key: str) -> str:
    """The template's name: the test database without its xdist suffix, then the key (≤ 63 bytes)."""
    base = test_database
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker and base.endswith(f"_{worker}"):
        base = base[: -len(worker) - 1]
    return f"{base[:63 - len(TEMPLATE_INFIX) - len(key)]}{TEMPLATE_INFIX}{key}"


def _admin_connection(settings_dict: dict) -> psycopg.Connection:
    return psycopg.connect(host=settings_dict.get("HOST") or None, port=settings_dict.get("PORT") or None,
                           user=settings_dict.get("USER") or None, password=settings_dict.get("PASSWORD") or None,
                           dbname="postgres", autocommit=True)


def _exists(admin: psycopg.Connection, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def set_up(settings_dict: dict, *, migrate_fresh, keep_existing) -> None:
    """Give the test database named in ``settings_dict["TEST"]["NAME"]`` the panel's schema.

    ``migrate_fresh()`` is Django's usual set-up (create and migrate); ``keep_existing()`` the same with
    keepdb, run once the database has been copied from the template (it migrates nothing and connects).
    """
    test_database = settings_dict["TEST"]["NAME"]
    key = migrations_key(installed_migration_directories(), __import__("django").get_version())
    template = template_name(test_database, key)
    with _admin_connection(settings_dict) as admin:
        # One builder at a time; the others wait here, then copy what it built.
        admin.execute("SELECT pg_advisory_lock(hashtext(%s))", [template])
        try:
            if _exists(admin, template):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(test_database)))
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(test_database), sql.Identifier(template)))
                keep_existing()
                return
            migrate_fresh()
            _make_template(admin, test_database, template)
        finally:
            admin.execute("SELECT pg_advisory_unlock(hashtext(%s))", [template])


def _make_template(admin: psycopg.Connection, test_database: str, template: str) -> None:
    """Copy the freshly migrated test database into the template (under a temporary name, then renamed)."""
    from django.db import connections

    # CREATE DATABASE … TEMPLATE needs the source without sessions: Django reconnects when a test asks.
    connections.close_all()
    building = f"{template[:63 - len('_build')]}_build"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(building)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(building), sql.Identifier(test_database)))
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(template)))
    prefix = template[: -len(template.rsplit(TEMPLATE_INFIX, 1)[1])]
    older = admin.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
                          [prefix, template]).fetchall()
    for (name,) in older:
        # Another run may be copying it right now: then it stays, and the next new template tries again.
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
