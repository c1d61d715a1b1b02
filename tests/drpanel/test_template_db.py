"""The test databases are copied from a template of the current migrations, never from a stale one."""

import django
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests import template_db


def _migrations(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [root / "app" / "migrations"]


def test_the_key_changes_when_a_migration_is_added_edited_or_renamed(tmp_path):
    files = {"app/migrations/__init__.py": "", "app/migrations/0001_initial.py": "operations = []\n"}
    key = template_db.migrations_key(_migrations(tmp_path / "a", files), "5.2")
    assert key == template_db.migrations_key(_migrations(tmp_path / "b", files), "5.2")
    edited = {**files, "app/migrations/0001_initial.py": "operations = [1]\n"}
    renamed = {"app/migrations/__init__.py": "", "app/migrations/0002_initial.py": "operations = []\n"}
    added = {**files, "app/migrations/0002_more.py": "operations = []\n"}
    others = {template_db.migrations_key(_migrations(tmp_path / name, variant), "5.2")
              for name, variant in (("edited", edited), ("renamed", renamed), ("added", added))}
    others.add(template_db.migrations_key(_migrations(tmp_path / "c", files), "5.1"))
    assert key not in others and len(others) == 4


def test_the_template_is_named_after_the_test_database_without_its_worker(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert template_db.template_name("test_drpanel_gw3", "0123456789ab") == "test_drpanel_tpl_0123456789ab"
    long = template_db.template_name("x" * 70 + "_gw3", "0123456789ab")
    assert len(long) == 63 and long.endswith("_tpl_0123456789ab")


@pytest.mark.django_db
def test_the_test_database_has_every_migration_applied_and_its_template_exists():
    assert MigrationExecutor(connection).migration_plan(MigrationExecutor(connection).loader.graph.leaf_nodes()) == []
    if not template_db.enabled():
        pytest.skip("DRPANEL_TEST_DB_TEMPLATE=0: every test database is migrated")
    key = template_db.migrations_key(template_db.installed_migration_directories(), django.get_version())
    name = template_db.template_name(connection.settings_dict["NAME"], key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        assert cursor.fetchone() == (1,), f"no template {name} for the current migrations"
