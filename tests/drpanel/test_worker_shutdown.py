"""SIGTERM stops an idle worker wherever it is, also while it readies the connection for its next horse.

rq's warm shutdown raises ``StopRequested`` from its signal handler, in whatever the idle worker is running. The
panel's worker opens its next horse's connection while idle (``PanelWorker._ready_database``) and tolerates a
database it cannot reach there: that tolerance must not swallow the shutdown, or the worker waits for its next
job (up to its dequeue timeout) instead of stopping. Seen once in a full run: a forked worker still there 90 s
after its SIGTERM. The moment is made here by sending the signal from inside the connect: the real handler, the
real exception, the real worker; only the connection's two methods are replaced, since a signal cannot be timed
to land inside a real connect.
"""

import os
import signal

import pytest
from django.db import OperationalError, connections
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from drpanel import queues
from drpanel.worker import PanelWorker


@pytest.fixture
def idle_worker(redis_conn):
    """A panel worker with rq's signal handlers installed, idle; the process's own handlers come back after."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = PanelWorker([queues.get_queue("default")], connection=redis_conn)
    worker._install_signal_handlers()
    worker.set_state(WorkerStatus.IDLE)
    try:
        yield worker
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_sigterm_while_the_idle_worker_opens_its_next_connection_stops_it(idle_worker, monkeypatch):
    conn = connections["default"]
    monkeypatch.setattr(conn, "close", lambda: None)

    def connect_as_sigterm_arrives():
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(conn, "ensure_connection", connect_as_sigterm_arrives)

    with pytest.raises(StopRequested):
        idle_worker._ready_database()


def test_a_database_the_idle_worker_cannot_reach_is_left_to_the_horse(idle_worker, monkeypatch, caplog):
    conn = connections["default"]
    monkeypatch.setattr(conn, "close", lambda: None)

    def refused():
        raise OperationalError("connection refused")

    monkeypatch.setattr(conn, "ensure_connection", refused)

    idle_worker._ready_database()

    assert idle_worker._spare_opened_at is None
    assert "no database connection ready for the next job (OperationalError)" in caplog.text
