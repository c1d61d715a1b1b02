"""The RQ worker the panel runs: short heartbeats, frequent registry maintenance, no orphaned work horses.

With rq's defaults a job whose whole worker was killed stays "started" for more than ten
minutes. A DR tool must notice that within a couple of minutes, so workers heartbeat
every 10 s, expire after 60 s of silence and clean the registries every 15 s (another
worker's clean-up then runs the job's failure callback with ``AbandonedJobError``).

Two refinements for jobs that restore databases:

- the work horse (the forked child that runs a job) dies with its worker: a worker killed
  with ``SIGKILL`` must not leave a horse restoring into a side database, or worse, swapping
  it in after the run was declared failed (its ``pg_restore`` dies with the horse in turn);
- a horse that dies (OOM killer, ``kill -9``) runs the job's failure callback at once, so the
  run row says "failed" within seconds, not after the registry clean-up.

And one for the time from a click to its job starting: a work horse does not open its own
database connection. The idle worker keeps one fresh connection open and unused
(``_ready_database``, renewed every ``SPARE_RENEW_SECONDS``); the horse it forks inherits it
and is its only user: right after the fork the worker lets go of its copy without a word to
the server (``_let_go_of_database``: its socket is pointed at ``/dev/null`` before it is
closed, so the server keeps the session the horse now owns). The horse checks it first
(``SELECT 1``) and connects afresh when it is dead or older than ``SPARE_MAX_AGE_SECONDS``.
One connection is never used by two processes.

And one for the CPU a horse spends on Python's cyclic garbage collector: before its first job the worker collects
once and freezes what start-up built (Django, the panel, every job's module: hundreds of thousands of objects that
live as long as the process; ``gc.freeze``). A horse inherits them frozen, so its full collections walk only what
its job makes, not the whole start-up heap (nor touch, and so copy, the pages it shares with the worker).

And two guards for panels that share a Redis (``drpanel.installation``):

- a worker claims its installation id in Redis before it takes any job, and refuses to
  start when another installation (another database) holds that id;
- a job that names a run this installation does not have (another panel's job, or a row
  deleted since) is never run and never passes silently: it fails with ``RunNotFound`` and
  a one-line reason in the log, lands in the queue's failed-job registry, and the refusal
  is audited. Failing it (rather than putting it back) is deliberate: with per-installation
  queue names, such a job can only come from a row that is gone or a misconfigured panel,
  and putting it back would let it bounce between workers for ever.
"""

import contextlib
import ctypes
import gc
import logging
import os
import signal
import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.utils.module_loading import autodiscover_modules
from rq.exceptions import StopRequested
from rq.worker import Worker, WorkerStatus

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues, runs
from drpanel.installation import InstallationConflict

log = logging.getLogger("drpanel.worker")

PR_SET_PDEATHSIG = 1
# An idle worker renews the connection its next horse inherits when it is older than this; the horse connects
# afresh rather than use one older than the second (the worker wakes at least every dequeue timeout, 45 s).
SPARE_RENEW_SECONDS = 30
SPARE_MAX_AGE_SECONDS = 120
SPARE_CONNECT_TIMEOUT_SECONDS = 10


def freeze_start_up() -> None:
    """Collect once, then move every object alive into the collector's permanent generation (``gc.freeze``)."""
    gc.collect()
    gc.freeze()


class WorkHorseKilled(Exception):
    """The work horse running a job died without finishing it (signal, OOM killer)."""


class RunNotFound(Exception):
    """A job names a run this installation does not have: it is failed, never run."""


def refuse_job_without_run(job) -> None:
    """Raise ``RunNotFound`` (logged, audited) when ``job`` carries a run whose row this installation lacks."""
    try:
        job.func  # noqa: B018 - imports the job's module, which registers its kind of run
    except Exception:
        return  # the job itself will fail to import, with its own error
    run_kind = next((k for k in runs.kinds() if k.job == job.func_name), None)
    if run_kind is None or not job.args:
        return
    run_id = str(job.args[0])
    try:
        exists = run_kind.model.objects.filter(pk=run_id).exists()
    except (ValidationError, ValueError):
        exists = False
    if exists:
        return
    message = (f"job {job.id} ({job.func_name}) names {run_kind.name} run {run_id}, which installation "
               f"{settings.INSTALLATION_ID} (database {queues.database_identity()}) does not have: a job of another "
               "panel sharing this Redis, or a run deleted since; failed, not run")
    log.error("%s", message)
    with transaction.atomic():
        audit_record(actor=None, action=AuditAction.JOB_REFUSED, outcome="failure", object_type=run_kind.name,
                     object_id=run_id[:64], object_repr=f"{run_kind.name} run {run_id}"[:200],
                     details={"job": job.id, "function": job.func_name, "queue": job.origin,
                              "installation": settings.INSTALLATION_ID})
    raise RunNotFound(message)


def _die_with_parent(parent_pid: int | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        # The worker died between fork() and prctl(): nobody would watch this job.
        os._exit(1)


def _let_go_of_database() -> None:
    """In the worker, just after forking a horse: forget the database connections the horse inherited.

    ``close()`` would tell the server goodbye on a socket the horse now uses; pointed at ``/dev/null``
    first, the goodbye goes nowhere and only this process's copy of the socket is closed.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in connections.all(initialized_only=True):
            if conn.connection is None:
                continue
            with contextlib.suppress(Exception):
                os.dup2(devnull, conn.connection.fileno())
            conn.close()
    finally:
        os.close(devnull)


def _adopt_database(opened_at: float | None) -> None:
    """In a new horse: keep the connection inherited from the worker if it is young and answers, else drop it
    (Django connects again on first use)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        fresh = opened_at is not None and time.monotonic() - opened_at <= SPARE_MAX_AGE_SECONDS
        usable = False
        if fresh and not conn.in_atomic_block:
            with contextlib.suppress(Exception):
                usable = conn.is_usable()
        if not usable:
            with contextlib.suppress(Exception):
                conn.close()
            conn.connection = None


def preload_jobs() -> None:
    """Import every app's ``jobs`` module in the worker, before it forks a work horse per job.

    A horse inherits what its worker imported; without this, each horse imported its job's
    module afresh (``restores.jobs`` and its dependencies: tens of milliseconds on a quiet
    machine, a large share of "click → job started").
    """
    autodiscover_modules("jobs")


class PanelWorker(Worker):
    """An rq ``Worker`` with the panel's shorter timings (overridable from the environment)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("maintenance_interval", int(os.environ.get("DRPANEL_WORKER_MAINTENANCE_SECONDS", 15)))
        kwargs.setdefault("worker_ttl", settings.WORKER_TTL_SECONDS)
        kwargs.setdefault("job_monitoring_interval", int(os.environ.get("DRPANEL_JOB_HEARTBEAT_SECONDS", 10)))
        super().__init__(*args, **kwargs)
        self._spare_opened_at: float | None = None

    def _ready_database(self) -> None:
        """Have a fresh database connection open for the next horse (renewed when older than
        ``SPARE_RENEW_SECONDS``). A database that cannot be reached is left to the horse, as before."""
        conn = connections["default"]
        opened = self._spare_opened_at
        if conn.connection is not None and opened is not None and time.monotonic() - opened < SPARE_RENEW_SECONDS:
            return
        try:
            conn.close()
        except StopRequested:
            raise
        except Exception:  # noqa: S110 - a connection that will not close cleanly is being replaced anyway
            pass
        self._spare_opened_at = None
        # Bounded: an unreachable server must not hold up the worker's heartbeat (the horse has no such bound).
        options = conn.settings_dict.setdefault("OPTIONS", {})
        bounded = "connect_timeout" not in options
        if bounded:
            options["connect_timeout"] = SPARE_CONNECT_TIMEOUT_SECONDS
        try:
            conn.ensure_connection()
        except StopRequested:
            # SIGTERM while idle: rq's handler raises this wherever the worker is, here too. Swallowed with the
            # database errors, it left the worker waiting for its next job instead of stopping.
            raise
        except Exception as exc:
            log.warning("no database connection ready for the next job (%s): its work horse will connect itself",
                        type(exc).__name__)
            return
        finally:
            if bounded:
                options.pop("connect_timeout", None)
        self._spare_opened_at = time.monotonic()

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
        self._ready_database()
        return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    def heartbeat(self, *args, **kwargs):
        super().heartbeat(*args, **kwargs)
        # While idle, rq heartbeats after each dequeue timeout: keep the next horse's connection fresh.
        if not self._is_horse and self.get_state() == WorkerStatus.IDLE:
            self._ready_database()

    def fork_work_horse(self, job, queue):
        super().fork_work_horse(job, queue)
        # Only the worker gets here (the horse leaves through os._exit): the connection is the horse's now.
        _let_go_of_database()
        self._spare_opened_at = None

    def work(self, *args, **kwargs):
        try:
            queues.claim_installation(self.connection)
        except InstallationConflict as exc:
            log.error("refusing to start: %s", exc)
            raise SystemExit(f"drpanel worker refused to start: {exc}") from None
        preload_jobs()
        freeze_start_up()
        return super().work(*args, **kwargs)

    def prepare_job_execution(self, job, *args, **kwargs):
        super().prepare_job_execution(job, *args, **kwargs)
        # Inside rq's try: a refusal fails the job like any exception (failed registry, callback, log).
        refuse_job_without_run(job)

    def main_work_horse(self, job, queue):
        _die_with_parent(self.pid)
        _adopt_database(self._spare_opened_at)
        super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        signal_note = f" by signal {os.WTERMSIG(ret_val)}" if ret_val and os.WIFSIGNALED(ret_val) else ""
        exc = WorkHorseKilled(f"the process running the job died{signal_note} (exit status {ret_val})")
        with contextlib.suppress(Exception):
            job.execute_failure_callback(self.death_penalty_class, WorkHorseKilled, exc, None)
