"""``drpanel.beside.running_beside``: a loop in its own thread for exactly as long as a block runs."""

import threading
import time

import pytest

from drpanel.beside import running_beside


def test_the_loop_runs_while_the_block_runs_and_stops_when_it_ends():
    ticks = []

    def loop(stop):
        while not stop.wait(0.01):
            ticks.append(threading.current_thread().name)

    with running_beside(loop, name="ticker") as stop:
        time.sleep(0.2)
        assert not stop.is_set()
    assert stop.is_set()
    counted = len(ticks)
    assert counted >= 3 and set(ticks) == {"ticker"}
    time.sleep(0.1)
    assert len(ticks) == counted, "the loop went on after the block"
    assert "ticker" not in {t.name for t in threading.enumerate()}


def test_the_loop_stops_when_the_block_raises():
    seen = {}

    def loop(stop):
        seen["thread"] = threading.current_thread()
        stop.wait()

    with pytest.raises(RuntimeError, match="boom"), running_beside(loop, name="doomed"):
        time.sleep(0.05)
        raise RuntimeError("boom")
    assert not seen["thread"].is_alive()


def test_a_loop_that_ignores_stop_does_not_hold_the_block_up():
    release = threading.Event()

    def stubborn(stop):
        release.wait(5)

    started = time.monotonic()
    with running_beside(stubborn, name="stubborn", join_seconds=0.1):
        pass
    assert time.monotonic() - started < 2
    release.set()
