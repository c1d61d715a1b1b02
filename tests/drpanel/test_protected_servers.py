"""The tests' own PostgreSQL servers (``tests.protected_servers``): one per session, a database per test, gone after."""

import psycopg
import pytest

from tests.protected_servers import PgServer

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
