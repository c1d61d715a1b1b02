"""The tests' own PostgreSQL servers (``tests.pg_servers``): one shared per session, a database per test, kept clean,
servers of their own copied from the run's one ``initdb``, gone after."""

import subprocess

import psycopg
import pytest

from tests import pg_servers
from tests.pg_servers import PgServer, kept_clean, own_server
from tests.support import wait_for

pytestmark = pytest.mark.slow


def test_the_protected_server_is_not_the_panels_and_takes_replication(protected_server, protected_database):
    with psycopg.connect(protected_database, autocommit=True) as conn:
        assert conn.execute("SHOW port").fetchone()[0] == str(protected_server.port)
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 3)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    with psycopg.connect(protected_server.url(), autocommit=True) as conn:
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
    assert data_directory == str(protected_server.data)
    with psycopg.connect(protected_server.url(), autocommit=True, replication="true") as replication:
        assert replication.execute("IDENTIFY_SYSTEM").fetchone()[0]


def test_a_database_made_on_it_is_its_own_and_dropped_after(protected_server):
    first, second = protected_server.create_database(), protected_server.create_database("CREATE TABLE t (n int)")
    assert first != second
    with psycopg.connect(first) as conn:
        assert conn.execute("SELECT to_regclass('t')").fetchone()[0] is None, "the other database's table"
    protected_server.drop_database(first)
    protected_server.drop_database(second)
    with psycopg.connect(protected_server.url(), autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                            [[u.rsplit("/", 1)[1] for u in (first, second)]]).fetchall()
    assert left == []


def test_a_server_of_its_own_stops_refuses_connections_after_and_leaves_no_folder():
    server = PgServer()
    try:
        url = server.start().url()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
    assert not server.folder.exists()


def test_what_a_block_made_on_the_shared_server_is_dropped_after_it_and_nothing_else(protected_server, tmp_path):
    kept = protected_server.create_database().rsplit("/", 1)[1]
    protected_server.execute("CREATE TABLE kept_table (n int)")
    receivewal = str(pg_servers.BIN_DIR / "pg_receivewal")
    with kept_clean(protected_server) as server:
        server.execute("CREATE ROLE leftover_owner LOGIN")
        # A table in the default database, where the next module's ``CREATE TABLE`` of the same name would fail.
        server.execute("CREATE TABLE leftover_table (n int)")
        # A role that owns something in a database the block did not make: it goes with what it owns.
        server.execute("CREATE TABLE owned_by_leftover (n int)", dbname=kept)
        server.execute("ALTER TABLE owned_by_leftover OWNER TO leftover_owner", dbname=kept)
        server.create_database(name="shop", owner="leftover_owner")
        server.execute("SELECT pg_create_physical_replication_slot('leftover_idle')")
        # A slot still streamed from, as Barman's receiver leaves one when only its parent was stopped.
        subprocess.run([receivewal, "-d", server.url(), "-S", "leftover_busy", "--create-slot"], check=True,
                       capture_output=True, timeout=30)
        streaming = subprocess.Popen([receivewal, "-d", server.url(), "-S", "leftover_busy", "-D", str(tmp_path),
                                      "--no-loop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: server.execute("SELECT active FROM pg_replication_slots "
                                            "WHERE slot_name = 'leftover_busy'") == [(True,)], what="streaming")
        except AssertionError:
            streaming.kill()
            raise
    try:
        assert streaming.wait(timeout=30) != 0, "its sender was ended"
    finally:
        streaming.kill()
    inventory = protected_server.inventory()
    assert "shop" not in inventory["databases"] and kept in inventory["databases"]
    assert "leftover_owner" not in inventory["roles"]
    assert not {"leftover_idle", "leftover_busy"} & inventory["slots"]
    assert protected_server.execute("SELECT to_regclass('owned_by_leftover')", dbname=kept) == [(None,)]
    assert "public.kept_table" in inventory["tables"] and "public.leftover_table" not in inventory["tables"]
    protected_server.execute("DROP TABLE kept_table")
    protected_server.drop_database(protected_server.url(kept))


def test_servers_of_their_own_copy_the_runs_one_initdb_and_are_configured_each_their_own_way():
    template = pg_servers.template_data()
    assert template is not None and (template / "PG_VERSION").exists()
    with own_server("closed", replication_hba=False) as closed, own_server("other") as other:
        assert pg_servers.template_data() == template, "one initdb for the run"
        assert closed.port != other.port and closed.data != other.data
        assert closed.execute("SHOW wal_level") == [("replica",)]
        for server, refused in ((closed, True), (other, False)):
            try:
                psycopg.connect(server.url(), replication="true", connect_timeout=10).close()
                answered = True
            except psycopg.OperationalError as exc:
                assert "pg_hba.conf" in str(exc) and "replication" in str(exc)
                answered = False
            assert answered is not refused, server.name
        # Each one writes only into its own copy: the template is never started.
        assert not (template / "postmaster.pid").exists()
        closed.execute("CREATE DATABASE only_here")
        assert other.execute("SELECT 1 FROM pg_database WHERE datname = 'only_here'") == []
