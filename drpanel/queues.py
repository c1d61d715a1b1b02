"""Putting jobs on the panel's RQ queues: by dotted path, and only once the transaction commits.

Services create the run row first and enqueue its job when the transaction commits
(``enqueue_on_commit``): a rolled-back request leaves no job behind, and a job never starts
before its row is visible to the worker. Jobs and failure callbacks are named by dotted
path (``"restores.jobs.restore_run_job"``), so a service never imports the jobs module that
calls it back: no ``jobs ↔ services`` import cycle.
"""

from collections.abc import Callable

import django_rq
from django.db import transaction
from rq import Callback
from rq.job import Job


def get_queue(name: str):
    """The RQ queue called ``name`` in this installation (``settings.RQ_QUEUES``)."""
    return django_rq.get_queue(name)


def get_connection(name: str):
    """The Redis connection of the queue called ``name``."""
    return django_rq.get_connection(name)


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
