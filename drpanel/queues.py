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

**Worker pools.** A system or a target may name a worker pool (the workers on one host, near
a database server). Its jobs go to the pool's own copy of each queue,
``drp-<id>:restore:pool:<pool>`` (``queue_name(name, pool=)``, built here only), and a
worker started with ``manage.py worker --pool <pool>`` takes them as well as the shared
queues; a worker without a pool never sees them. Which pool a worker serves is read from
its queue list in Redis (``worker_pool``), so ``/metrics``, the run pages and ``/health``
agree with what the workers actually listen on.
"""

import re
from collections.abc import Callable
from datetime import UTC, datetime

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from rq import Callback, Queue, Worker
from rq.job import Job

from drpanel import installation

POOL_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
POOL_SEPARATOR = ":pool:"
# The instance name of a worker that serves no pool (``drpanel-worker@default``); never a pool's name.
NO_POOL = "default"


def pool_error(pool: str) -> str | None:
    """None when ``pool`` may name a worker pool, else the reason it may not."""
    if not re.match(POOL_PATTERN, pool or ""):
        return f"{pool!r} is not a worker pool name: 1-40 of a-z, 0-9 and '-', starting with a letter or digit"
    if pool == NO_POOL:
        return f"{NO_POOL!r} names the workers that serve no pool; pick another name"
    return None


def validate_pool(value: str) -> None:
    """The model validator of a ``worker_pool`` field (empty is allowed by ``blank``, never passed here)."""
    if reason := pool_error(value):
        raise ValidationError(reason)


def queue_name(name: str, pool: str = "") -> str:
    """The Redis name of this installation's logical queue ``name`` (of ``pool`` when given; a name already
    prefixed is kept)."""
    if name.startswith(settings.RQ_QUEUE_PREFIX):
        return name
    if name not in settings.RQ_QUEUE_NAMES:
        raise KeyError(f"no queue {name!r}: the panel's queues are {', '.join(settings.RQ_QUEUE_NAMES)}")
    if not pool:
        return settings.RQ_QUEUE_PREFIX + name
    reason = pool_error(pool)
    if reason:
        raise KeyError(reason)
    return f"{settings.RQ_QUEUE_PREFIX}{name}{POOL_SEPARATOR}{pool}"


def queue_names(names=None, *, pool: str = "") -> list[str]:
    """The Redis names of ``names`` (default: every queue of this installation), for ``manage.py rqworker``.

    With ``pool``: the pool's queues first, then the shared ones (a pool's worker takes both)."""
    shared = [queue_name(name) for name in (names or settings.RQ_QUEUE_NAMES)]
    if not pool:
        return shared
    return [queue_name(name, pool) for name in (names or settings.RQ_QUEUE_NAMES)] + shared


def get_queue(name: str, pool: str = ""):
    """This installation's RQ queue ``name`` (logical, e.g. ``"restore"``), of ``pool`` when given."""
    shared = django_rq.get_queue(queue_name(name))
    if not pool:
        return shared
    # django-rq knows only the queues of its RQ_QUEUES setting: a pool's queue is a plain rq queue, the
    # shared one's twin (same Redis, time limit, job class) under the pool's name. It enqueues at once, as
    # the shared queues do outside a transaction: the panel enqueues only once its transaction commits.
    return Queue(queue_name(name, pool), connection=shared.connection, default_timeout=shared._default_timeout,
                 is_async=shared._is_async, job_class=shared.job_class, serializer=shared.serializer)


def pool_queue_settings(pool: str) -> dict:
    """``RQ_QUEUES`` entries for ``pool``'s queues (each its shared queue's), for a worker process of the pool."""
    return {queue_name(name, pool): settings.RQ_QUEUES[queue_name(name)] for name in settings.RQ_QUEUE_NAMES}


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
    """The live RQ workers of this installation: those listening on at least one of its queues (pools' too)."""
    return [worker for worker in Worker.all(connection=connection)
            if any(name.startswith(settings.RQ_QUEUE_PREFIX) for name in worker.queue_names())]


def is_alive(worker: Worker, now: datetime | None = None) -> bool:
    """Whether ``worker`` heartbeat within ``DRPANEL_WORKER_TTL_SECONDS``.

    Redis keeps a worker killed with ``SIGKILL`` registered for its TTL plus a minute (rq's
    margin); a page saying "no worker in pool B" must not wait for that."""
    beat = worker.last_heartbeat
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - beat).total_seconds() <= settings.WORKER_TTL_SECONDS


def worker_pool(worker: Worker) -> str:
    """The pool ``worker`` serves, read from its queue list ("" when it serves none)."""
    for name in worker.queue_names():
        if name.startswith(settings.RQ_QUEUE_PREFIX) and POOL_SEPARATOR in name:
            return name.rsplit(POOL_SEPARATOR, 1)[1]
    return ""


def pool_workers(connection, pool: str) -> list[Worker]:
    """The live workers of this installation that take the jobs of ``pool`` ("": the shared queues, any worker)."""
    return [worker for worker in our_workers(connection)
            if is_alive(worker) and (not pool or worker_pool(worker) == pool)]


def workers_per_pool(connection) -> dict[str, int]:
    """Live workers of this installation per pool they serve ("" for those that serve none)."""
    counts: dict[str, int] = {}
    for worker in filter(is_alive, our_workers(connection)):
        pool = worker_pool(worker)
        counts[pool] = counts.get(pool, 0) + 1
    return counts


def depths(connection) -> dict[str, int]:
    """Jobs waiting per logical queue of this installation."""
    return {name: Queue(queue_name(name), connection=connection).count for name in settings.RQ_QUEUE_NAMES}


def enqueue(path: str, *args, queue: str, timeout: int, on_failure: str | None = None, pool: str = "",
            ttl: int | None = None) -> Job:
    """Enqueue the job ``path`` (a dotted path to a function) now, with its time limit and failure callback,
    on ``pool``'s copy of the queue when given; ``ttl``: seconds it may wait in the queue before it is dropped
    (for a periodic job whose next one replaces it)."""
    options = {"on_failure": Callback(on_failure)} if on_failure else {}
    if ttl is not None:
        options["ttl"] = ttl
    return get_queue(queue, pool).enqueue(path, *args, job_timeout=timeout, **options)


def enqueue_on_commit(path: str, *args, queue: str, timeout: int, on_failure: str | None = None,
                      then: Callable[[Job], None] | None = None, robust: bool = True, pool: str = "") -> None:
    """Enqueue ``path(*args)`` once the current transaction commits; ``then(job)`` records the job.

    ``robust``: an enqueue that fails (Redis unreachable) is logged by Django and does not
    fail the request that already committed; the reconcilers find the run without a job
    and queue it again.
    """

    def send() -> None:
        job = enqueue(path, *args, queue=queue, timeout=timeout, on_failure=on_failure, pool=pool)
        if then is not None:
            then(job)

    transaction.on_commit(send, robust=robust)
