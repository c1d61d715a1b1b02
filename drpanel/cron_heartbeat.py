"""The cron scheduler's heartbeat: proof, readable by the panel, that exactly one scheduler runs.

``manage.py rqcron drpanel.cron`` loads ``drpanel.cron``, which starts ``start_beating()``: a
daemon thread that, every ``CRON_HEARTBEAT_SECONDS``, writes this scheduler's beat into the
Redis hash ``drp-<installation>:cron:heartbeats`` (field: the scheduler's identity
``host:pid:random``; value: JSON with host, pid, start and beat times). It beats only while rq's
own scheduler loop in this process is alive (its entry in rq's scheduler registry is fresh), so
a scheduler whose loop hangs stops beating too. A clean exit removes its field.

``read()`` is what ``/health``, ``/metrics`` and the check read: the age of the newest beat, and
the schedulers beating now. ``state()`` says ``ok``, ``missing`` (no beat for
``CRON_HEARTBEAT_MISSING_SECONDS``) or ``duplicate`` (two or more beating at once: every job
would be queued twice).
"""

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from rq import cron_scheduler_registry
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL

from drpanel import clock

log = logging.getLogger(__name__)
FORGET_SECONDS = 24 * 3600  # a field older than this is a long-dead scheduler: dropped


def key() -> str:
    return f"{settings.RQ_QUEUE_PREFIX}cron:heartbeats"


def identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def beat(connection, who: str, started_at: float) -> None:
    """Write one beat of scheduler ``who`` now (the panel's clock), and forget long-dead schedulers."""
    now = clock.now().timestamp()
    connection.hset(key(), who, json.dumps({"host": who.split(":")[0], "pid": int(who.split(":")[1]),
                                            "started_at": started_at, "beat_at": now}))
    stale = [name for name, raw in connection.hgetall(key()).items()
             if now - json.loads(raw)["beat_at"] > FORGET_SECONDS]
    if stale:
        connection.hdel(key(), *stale)


def forget(connection, who: str) -> None:
    connection.hdel(key(), who)


def rq_loop_alive(connection, pid: int | None = None) -> bool:
    """Whether rq's scheduler loop in this process beat into rq's own registry within its TTL."""
    prefix = f"{socket.gethostname()}:{pid or os.getpid()}:"
    now = time.time()
    return any(name.decode().startswith(prefix) and now - score < DEFAULT_CRON_SCHEDULER_TTL
               for name, score in connection.zrange(cron_scheduler_registry.get_registry_key(), 0, -1,
                                                    withscores=True))


def start_beating(connection) -> str:
    """Start the beating thread of this scheduler process; returns its identity."""
    who = identity()
    started_at = clock.now().timestamp()

    def loop():
        while True:
            try:
                if rq_loop_alive(connection):
                    beat(connection, who, started_at)
            except Exception as exc:  # Redis away for a moment: the next beat tries again; /health shows the gap
                log.warning("cron heartbeat not written: %s", type(exc).__name__)
            time.sleep(settings.CRON_HEARTBEAT_SECONDS)

    threading.Thread(target=loop, name="drpanel-cron-heartbeat", daemon=True).start()
    atexit.register(forget, connection, who)
    return who


@dataclass(frozen=True)
class Heartbeat:
    """What Redis says of the schedulers now."""

    age_seconds: float | None  # of the newest beat; None: no beat ever (or forgotten)
    live: list[dict] = field(default_factory=list)  # schedulers that beat within three intervals

    @property
    def state(self) -> str:
        if self.age_seconds is None or self.age_seconds > settings.CRON_HEARTBEAT_MISSING_SECONDS:
            return "missing"
        return "duplicate" if len(self.live) > 1 else "ok"


def read(connection) -> Heartbeat:
    now = clock.now().timestamp()
    beats = [{"scheduler": name.decode() if isinstance(name, bytes) else name, **json.loads(raw)}
             for name, raw in connection.hgetall(key()).items()]
    if not beats:
        return Heartbeat(age_seconds=None)
    live_window = max(3 * settings.CRON_HEARTBEAT_SECONDS, 1)
    live = sorted((b for b in beats if now - b["beat_at"] <= live_window), key=lambda b: b["scheduler"])
    return Heartbeat(age_seconds=max(now - max(b["beat_at"] for b in beats), 0.0), live=live)
