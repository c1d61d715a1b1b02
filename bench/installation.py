"""The benchmarks' own installation: their own queues beside a running demo, their own leftovers cleared.

Each benchmark that runs jobs is an installation of its own (``DRPANEL_INSTALLATION_ID`` =
``bench-<its panel database>``), so its queues are ``drp-bench-…:<queue>``: the demo's
workers never take its jobs, and its workers never take the demo's. Before it starts, it
clears what an interrupted run of the same benchmark left in Redis (queued and registered
jobs, workers of its queues, a worker process still running), and nothing else.

Every wait has a deadline and, when it passes, a message naming what it waited for
(``wait_until``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

PREFIX = "bench-"


def use_own_installation(panel_db: str) -> str:
    """Before ``django.setup()``: this benchmark's installation id (inherited by the workers it starts)."""
    value = (PREFIX + re.sub(r"[^a-z0-9_-]", "-", panel_db.lower()))[:40]
    os.environ["DRPANEL_INSTALLATION_ID"] = value
    return value


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05, detail=None):
    """Poll ``predicate`` until it returns something true (returned); past ``timeout`` s, stop naming ``what``.

    ``detail`` (a callable) adds context to the message, e.g. the tail of a worker's log.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def our_workers() -> list:
    from drpanel import queues

    return queues.our_workers(queues.get_connection())


def wait_for_workers(count: int, timeout: float = 60, detail=None) -> None:
    """Wait until ``count`` live workers listen on this benchmark's queues."""
    wait_until(lambda: len(our_workers()) >= count, timeout,
               f"{count} RQ worker(s) on this benchmark's queues ({os.environ['DRPANEL_INSTALLATION_ID']})",
               interval=0.1, detail=detail)


def clear_leftovers() -> dict:
    """Remove what an interrupted run of this benchmark left in Redis; only this installation's keys.

    Jobs waiting on its queues and in their registries are deleted; a worker process of its
    queues still running on this host (an orphan of the interrupted run: only this benchmark
    uses this installation id) is killed, and workers registered on its queues are unregistered.
    """
    import psutil
    from django.conf import settings
    from rq.job import Job

    from drpanel import queues

    connection = queues.get_connection()
    cleared = {"jobs": 0, "workers": 0}
    # Worker processes of this installation still running here, registered or not (a flushed
    # Redis forgets the registration, not the process).
    orphans = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid != os.getpid() and "rqworker" in cmdline and any(
                arg.startswith(settings.RQ_QUEUE_PREFIX) for arg in cmdline):
            orphans.append(proc)
    for proc in orphans:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(orphans, timeout=10)
    for worker in our_workers():
        worker.register_death()
    cleared["workers"] = len(orphans)
    for name in settings.RQ_QUEUE_NAMES:
        queue = queues.get_queue(name)
        registries = (queue.started_job_registry, queue.failed_job_registry, queue.finished_job_registry,
                      queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry)
        job_ids = set(queue.get_job_ids())
        job_ids.update(raw.decode() for raw in connection.lrange(queue.intermediate_queue_key, 0, -1))
        for registry in registries:
            job_ids.update(registry.get_job_ids())
        for job in Job.fetch_many(sorted(job_ids), connection=connection):
            if job is not None:
                job.delete()
                cleared["jobs"] += 1
        queue.empty()
        connection.delete(queue.intermediate_queue_key, *(registry.key for registry in registries))
    return cleared
