"""RPO under load: pgbench writes to a real protected server while a real Barman receiver streams its WAL.

The server is started by the test (``tests/continuous_support.py``), never the panel's; RPO is
read the way the panel reads it (``continuous_refresh`` then ``rpo_for``), about every second.
Beside it, the benchmark's own measure (``bench/protected.py``: the WAL position Barman's
receiver has written, against the server's) checks that the RPO the panel shows is not smaller
than what is really at risk. Nothing is mocked.
"""

import re
import subprocess
import time

import pytest

from backups.continuous import continuous_refresh
from backups.models import System
from bench.continuous import lags
from bench.protected import parse_lsn, written_lsn
from compliance.measurements import rpo_for
from tests import continuous_support
from tests.continuous_support import BINDIR, URL_VARIABLE, catalog_reaches, segment_of_switch, streams
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings

LOAD_SECONDS = 20
RPO_LIMIT = 5


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


def pgbench(server, *args: str) -> list[str]:
    return [str(BINDIR / "pgbench"), *args, "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "load"]


def server_lsn(server) -> int:
    return parse_lsn(str(server.execute("SELECT pg_current_wal_lsn()")[0][0]))


def test_rpo_stays_under_five_seconds_while_pgbench_writes(shop, server, barman_home):
    server.execute("CREATE DATABASE load")
    subprocess.run(pgbench(server, "-i", "-q", "-s", "2"), check=True, capture_output=True)
    streams(server)
    catalog_reaches(shop, segment_of_switch(server))
    received = barman_home / "shop"
    began = server_lsn(server)

    load = subprocess.Popen(pgbench(server, "-n", "-c", "2", "-j", "2", "-T", str(LOAD_SECONDS)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rpos, positions = [], []
    try:
        while load.poll() is None:
            tick = time.monotonic()
            continuous_refresh(shop)
            rpos.append(rpo_for(shop).seconds)
            positions.append((time.monotonic(), server_lsn(server), written_lsn(received)))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        output, errors = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()

    assert load.returncode == 0, errors
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", output)[1])
    ended = server_lsn(server)
    assert transactions > 100 and ended - began > 1024 * 1024, "pgbench wrote too little to measure anything"
    assert len(rpos) >= LOAD_SECONDS // 4, f"only {len(rpos)} RPO samples in {LOAD_SECONDS} s"
    assert None not in rpos and max(rpos) < RPO_LIMIT, rpos
    # What was really at risk at each sample (the WAL the server had and Barman had not) stayed under the limit
    # too, so the RPO the panel showed was not a flattering number.
    assert max(lags(positions)) < RPO_LIMIT, lags(positions)
    # And every byte pgbench wrote reached Barman once it stopped (a commit after it: WAL may end in zero bytes,
    # which the position read from Barman's files cannot tell from space not yet written).
    server.execute("SELECT txid_current()")
    wait_for(lambda: written_lsn(received) >= ended, timeout=30, what="the WAL pgbench wrote, in Barman's home")
