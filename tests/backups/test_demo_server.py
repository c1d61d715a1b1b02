"""The demo's protected database on its own PostgreSQL: created, streamed by Barman, written to, stopped.

What ``manage.py serve --demo`` does before and after the panel runs, through the same functions:
``demo_server.start()``, the demo's seed (continuous protection on, Barman's stream started, the first
base backup queued and taken here by the real job body), the demo writer, then
``stop_protected_server()``. Real initdb (as the ``postgres`` user), real Barman, real pg_receivewal.
"""

import io
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from backups import barman, demo, demo_server
from backups.demo_writer import place_order, write_orders
from backups.models import Artifact, BackupRun, System
from backups.runs import backup_run_execute
from drpanel import runtime
from tests.continuous_support import POSTGRES
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo_var(settings):
    """A var/ of the demo's own, which the ``postgres`` user can reach (pytest's tmp_path is closed to it)."""
    var = Path(tempfile.mkdtemp(prefix="drpanel-demo-var-"))
    var.chmod(0o755)
    settings.VAR_DIR = var
    settings.BARMAN_HOME = var / "barman"
    settings.DEMO_DATABASE = "chatbotdysa"
    settings.DEMO_S3_ENDPOINT = None
    settings.DEMO_PG_PORT = 0
    yield var
    demo.stop_protected_server()
    shutil.rmtree(var, ignore_errors=True)


def streaming(server: demo_server.DemoServer) -> int:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                            "'barman_receive_wal' AND state = 'streaming'").fetchone()[0]


def test_the_demo_database_runs_on_its_own_server_streamed_by_barman_and_stops_with_the_demo(
        demo_var, monkeypatch, redis_conn):
    monkeypatch.delenv("DRPANEL_DEMO_S3_ENDPOINT", raising=False)
    server = demo_server.start()

    panel_port = int(connection.settings_dict["PORT"] or 5432)
    assert server.port != panel_port, "the protected database is never on the panel's server"
    data = demo_var / "demo" / "pg" / "data"
    assert (data / "PG_VERSION").exists() and data.stat().st_uid == POSTGRES.pw_uid
    with psycopg.connect(server.url(), autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", connect_timeout=5).close()
    assert demo_server.start() == server, "a second start finds the running server"

    out = io.StringIO()
    demo.seed(out)
    assert "continuous protection on" in out.getvalue()
    system = System.objects.get(name=demo.SYSTEM)
    assert system.continuous_enabled
    assert demo.source_url() == server.url("chatbotdysa")
    wait_for(lambda: streaming(server), what="Barman's receiver streaming from the demo's server")
    with psycopg.connect(server.url(), autocommit=True) as conn:
        assert conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                            [barman.slot_name(system)]).fetchone() == (True,)
    password = server.url().split(":")[2].split("@")[0]
    assert password not in (barman.home() / "conf.d" / "chatbotdysa.conf").read_text()

    base_run = BackupRun.objects.get(system=system, kind="base", state=BackupRun.State.QUEUED)
    assert backup_run_execute(base_run.id).state == BackupRun.State.SUCCEEDED
    base = Artifact.objects.get(system=system, kind="base")
    assert base.status == "available" and base.storage_key.startswith("barman:chatbotdysa/")

    # The writer keeps placing orders; a dropped connection (a swap, a restart) only pauses it.
    url = server.url("chatbotdysa")
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM orders").fetchone()[0]

    def drop_the_writer(_seconds):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'demo writer'")

    assert write_orders(url, every=0, count=3, sleep=drop_the_writer) == 3
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == before + 3
        order_id, placed_at = place_order(conn)
        assert order_id > 0 and placed_at is not None

    receiver = barman.receiver_pid(system)
    assert receiver is not None
    demo.stop_protected_server()

    assert demo_server.running() is None
    assert not runtime.port_answers(server.port)
    assert not (data / "postmaster.pid").exists()
    with pytest.raises(demo_server.DemoServerError, match="not running: start the demo with `make demo`"):
        demo.seed(io.StringIO())
    wait_for(lambda: not os.path.exists(f"/proc/{receiver}") or b"Z" in Path(f"/proc/{receiver}/stat")
             .read_bytes().split(b")")[-1][:3], what="Barman's receiver gone")


def test_missing_server_programs_say_what_to_install(tmp_path):
    with pytest.raises(demo_server.DemoServerError, match="initdb, pg_ctl, postgres.*install the postgresql"):
        demo_server.server_bindir([str(tmp_path)])


def test_a_configured_port_that_is_taken_is_refused_before_anything_is_created(demo_var, settings):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.DEMO_PG_PORT = taken.getsockname()[1]
        with pytest.raises(demo_server.DemoServerError, match="DRPANEL_DEMO_PG_PORT"):
            demo_server.start()
    assert demo_server.running() is None and not (demo_var / "demo" / "pg").exists()
