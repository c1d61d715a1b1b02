"""Putting jobs on the panel's RQ queues: by dotted path, and only once the transaction commits.

Services create the run row first and enqueue its job when the transaction commits
(``enqueue_on_commit``): a rolled-back request leaves no job behind, and a job never starts
before its row is visible to the worker. Jobs and failure callbacks are named by dotted
path (``"restores.jobs.restore_run_job"``), so a service never imports the jobs module that
calls it back: no ``jobs ↔ services`` import cycle.

Code names queues by their logical name (``"restore"``); in Redis each carries this
installation's prefix (``drp-<id>:restore``, ``drpanel.installation``), and ``queue_name``
is the one place that adds it. Workers, the scheduler, ``/health`` and ``/metrics`` use
the same names, so they only ever see this installation's jobs and workers.
"""

from collections.abc import Callable

import django_rq
from django.conf import settings
from django.db import connections, transaction
from rq import Callback, Queue, Worker
from rq.job import Job

from drpanel import installation


def queue_name(name: str) -> str:
    """The Redis name of this installation's logical queue ``name`` (a name already prefixed is kept)."""
    if name.startswith(settings.RQ_QUEUE_PREFIX):
        return name
    if name not in settings.RQ_QUEUE_NAMES:
        raise KeyError(f"no queue {name!r}: the panel's queues are {', '.join(settings.RQ_QUEUE_NAMES)}")
    return settings.RQ_QUEUE_PREFIX + name


def queue_names(names=None) -> list[str]:
    """The Redis names of ``names`` (default: every queue of this installation), for ``manage.py rqworker``."""
    return [queue_name(name) for name in (names or settings.RQ_QUEUE_NAMES)]


def get_queue(name: str):
    """This installation's RQ queue ``name`` (logical, e.g. ``"restore"``)."""
    return django_rq.get_queue(queue_name(name))


def get_connection(name: str = "default"):
    """The Redis connection of this installation's queue ``name``."""
    return django_rq.get_connection(queue_name(name))


def database_identity() -> str:
    """The database this process keeps its rows in (``host:port/name``), as its connection sees it now."""
    db = connections["default"].settings_dict
    return installation.database_identity(db["HOST"], db["PORT"], db["NAME"])


def claim_installation(connection=None) -> None:
    """Claim this installation's id in Redis at start-up; ``InstallationConflict`` when another panel holds it."""
    installation.claim(connection or get_connection(), settings.INSTALLATION_ID, database_identity())


def our_workers(connection) -> list[Worker]:
    """The live RQ workers of this installation: those listening on at least one of its queues."""
    ours = set(queue_names())
    return [worker for worker in Worker.all(connection=connection) if ours.intersection(worker.queue_names())]


def depths(connection) -> dict[str, int]:
    """Jobs waiting per logical queue of this installation."""
    return {name: Queue(queue_name(name), connection=connection).count for name in settings.RQ_QUEUE_NAMES}


def enqueue(path: str, *args, queue: str, timeout: int, on_failure: str | None = None) -> Job:
    """Enqueue the job ``path`` (a dotted path to a function) now, with its time limit and failure callback."""
    options = {"on_failure": Callback(on_failure)} if on_failure else {}
    return get_queue(queue).enqueue(path, *args, job_timeout=timeout, **options)


def enqueue_on_commit(path: str, *args, queue: str, timeout: int, on_failure: str | None = None,
                      then: Callable[[Job], None] | None = None, robust: bool = True) -> None:
    """Enqueue ``path(*args)`` once the current transaction commits; ``then(job)`` records the job.

    ``robust``: an enqueue that fails (Redis unreachable) is logged by Django and does not
    fail the request that already committed; the reconcilers find the run without a job
    and queue it again.
    """

    def send() -> None:
        job = enqueue(path, *args, queue=queue, timeout=timeout, on_failure=on_failure)
        if then is not None:
            then(job)

    transaction.on_commit(send, robust=robust)
