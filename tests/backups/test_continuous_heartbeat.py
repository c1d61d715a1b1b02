"""A base backup that waits for a spread checkpoint keeps its run alive: the reaper never fails it meanwhile.

``barman backup`` reports nothing until it ends, and a spread checkpoint (what Barman asks for) paces its writes
over ``checkpoint_completion_target`` × ``checkpoint_timeout``. Without a heartbeat beside Barman, a weekly base
backup of a busy server (up to 4.5 min of checkpoint at PostgreSQL's defaults) outlived
``DRPANEL_BACKUP_STALE_SECONDS`` (3 min) and was failed by the reaper while Barman was still copying. Here a server
of its own paces its checkpoints over about 9 s (30 s × 0.3), the stale bound is 5 s, and the reaper runs every
half second throughout. Real PostgreSQL, real Barman, nothing mocked.
"""

import threading
import time

import pytest
from django.db import connection

from backups.models import Artifact, BackupRun, System
from backups.runs import backup_request, backup_run_execute, backup_runs_reap
from compliance.models import AuditEvent
from tests.continuous_support import PASSWORD, URL_VARIABLE, streams
from tests.pg_servers import own_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def paced_server():
    with own_server("paced", conf={"checkpoint_timeout": "30s", "checkpoint_completion_target": "0.3"}) as server:
        yield server


def test_a_base_backup_waiting_for_a_spread_checkpoint_is_not_reaped(paced_server, settings, tmp_path, monkeypatch,
                                                                     redis_conn):
    settings.BARMAN_HOME = tmp_path / "barman"
    settings.BACKUP_STALE_SECONDS, settings.HEARTBEAT_SECONDS = 5, 1
    monkeypatch.setenv(URL_VARIABLE, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{paced_server.port}/postgres")
    shop = System.objects.create(name="paced", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)
    streams(paced_server)
    # The first base backup closes a segment first (an immediate checkpoint): take it, then dirty the buffers.
    assert backup_run_execute(backup_request(actor=None, system=shop, kind="base").id).state == "succeeded"
    paced_server.execute("CREATE DATABASE dirty")
    paced_server.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 100000) g",
                         dbname="dirty")
    run = backup_request(actor=None, system=shop, kind="base")
    done = {}

    def execute():
        try:
            done["run"] = backup_run_execute(run.id)
        finally:
            connection.close()

    started = time.monotonic()
    worker = threading.Thread(target=execute)
    worker.start()
    while worker.is_alive():
        backup_runs_reap()
        time.sleep(0.5)
    worker.join()
    took = time.monotonic() - started

    assert took > settings.BACKUP_STALE_SECONDS + 1, f"the backup took {took:.1f} s: too short to prove anything"
    assert done["run"].state == BackupRun.State.SUCCEEDED, done["run"].error
    assert not AuditEvent.objects.filter(action="backup.failed").exists(), "the reaper failed a running backup"
    assert Artifact.objects.filter(system=shop, kind="base", status="available").count() == 2
