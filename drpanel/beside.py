"""A loop in a thread of its own for as long as a block runs (a heartbeat, a nudge, an "alive" message)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def running_beside(loop: Callable[[threading.Event], None], *, name: str,
                   join_seconds: float = 10) -> Iterator[threading.Event]:
    """Run ``loop(stop)`` in a daemon thread named ``name`` while the block runs; yield ``stop``.

    However the block ends, ``stop`` is set and the thread waited for, at most ``join_seconds``: ``loop`` is to
    return soon after ``stop`` is set (``while not stop.wait(interval): …``). A loop that does not is left behind as
    a daemon thread rather than holding up the block's end."""
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=join_seconds)
