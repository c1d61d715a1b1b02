"""The setup the system page asks for is enough: a role given exactly those grants can do what Barman does.

Run against the session's protected PostgreSQL server (never the panel's): a fresh login role gets the page's
``role`` and ``grants`` statements and nothing else, then runs what ``barman backup`` and ``barman switch-wal
--force`` run on the server. Nothing is mocked.
"""

import psycopg
import pytest

from backups.continuous import setup_instructions
from backups.models import System

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

VARIABLE = "DRPANEL_SECRET_TEST_SETUP_URL"


def test_a_role_with_only_the_pages_grants_can_checkpoint_switch_wal_and_take_a_backup(protected_server, monkeypatch):
    role = "barman_setup_probe"
    with psycopg.connect(protected_server.url(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        monkeypatch.setenv(VARIABLE, protected_server.url().replace("postgres@", f"{role}@"))
        system = System.objects.create(name="setup", database_ref=f"env:{VARIABLE}", continuous_enabled=True)

        asked = setup_instructions(system)

        with psycopg.connect(protected_server.url(), autocommit=True) as conn:
            conn.execute(asked["role"])
            conn.execute(asked["grants"])
        with psycopg.connect(protected_server.url().replace("postgres@", f"{role}@"), autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # barman switch-wal --force
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("SELECT pg_create_restore_point('setup-probe')")
            conn.execute("SELECT pg_backup_start('setup-probe', true)")
            conn.execute("SELECT pg_backup_stop(false)")
            conn.execute("SHOW data_directory")  # pg_read_all_settings: Barman's check reads it
    finally:
        with psycopg.connect(protected_server.url(), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
