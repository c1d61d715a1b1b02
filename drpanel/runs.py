"""The runtime every background run shares: steps, progress, heartbeats, RQ checks, and the reconciler's hooks.

A run is a row in PostgreSQL (its truth) plus an RQ job (its vehicle). What a running job
writes to its row, and what the reconcilers do when the two disagree, is the same for
every kind of run, so it lives here once:

- ``StepList`` keeps a run's planned steps (each with a weight), saves them as they change
  (throttled for progress), and derives the overall percent and an ETA from the time spent
  so far; ``StepLog`` is the simpler list a run appends to as it goes, and ``ByteProgress``
  writes a byte-counted percent;
- ``Heartbeat`` is a thread that stamps ``heartbeat_at`` every ``DRPANEL_HEARTBEAT_SECONDS``
  while the job's body runs, whatever it is doing (a long ``pg_restore``, a slow sanity
  query): a run whose heartbeat stops is a run whose worker died. The heartbeat proves the
  worker alive, not the run moving: ``progress_at`` (on models that have it) advances only
  when the steps, the bytes or the percent change, and a run whose progress has not moved
  for ``DRPANEL_RUN_STALL_SECONDS`` is failed even though its heartbeat still beats;
- ``run_body`` marks a run's own work: what its commits set off beside it (a health recompute) is
  queued as a job of its own rather than delaying the run's end;
- ``job_status`` asks RQ about a job, ``stop_job`` removes a queued job or stops a started
  one (RQ's stop-job command), and ``failure_reason`` turns a failure callback's exception
  into a reason people can read;
- ``RunKind`` is one kind of run (its model, queue, job, time limit — fixed, or per run
  through ``timeout_for`` — and failure callback, and the hooks to fail, requeue and tidy
  one of its runs); ``register`` makes it known, and ``reconcile_runs`` settles the runs of
  the kinds that ask for it.

A new kind is a small subclass of ``RunKind`` registered by the module that owns its runs,
like NetBox's ``JobRunner``. This module sits in the panel's core: it imports no app, and
the audit events of a failure or a requeue are written by the kind's hooks.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from drpanel import queues

# A queued run whose job went missing is queued again this many times in all, then failed.
MAX_ENQUEUES = 3
ENDED = ("finished", "failed", "stopped", "canceled")
DEAD = ("failed", "stopped", "canceled")
WAITING = ("queued", "started", "deferred", "scheduled")


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def has_progress_clock(model) -> bool:
    """Whether the run model records when its progress last moved (``progress_at``)."""
    return any(f.name == "progress_at" for f in model._meta.get_fields())


# --- steps and progress ------------------------------------------------------------------------


class StepList:
    """The planned steps of one run, saved on the row (``model.steps`` or ``model.results``) as they change."""

    def __init__(self, run, plan: list[tuple[str, int]], *, field: str = "steps", save_interval: float = 0.5):
        self.run = run
        self.model = type(run)
        self.field = field
        self.save_interval = save_interval
        self.started = time.monotonic()
        self.last_save = 0.0
        self.steps = [{"name": name, "state": "pending", "weight": weight, "started_at": None, "finished_at": None,
                       "duration_ms": None, "bytes": None, "detail": "", "fraction": 0.0} for name, weight in plan]
        self._clocks: dict[str, float] = {}
        self._clocked = has_progress_clock(self.model)
        self._moved: tuple | None = None
        self.save()

    def get(self, name: str) -> dict:
        for step in self.steps:
            if step["name"] == name:
                return step
        raise KeyError(name)

    def start(self, name: str, detail: str = "") -> dict:
        step = self.get(name)
        step.update(state="running", started_at=_iso(timezone.now()), detail=detail[:500])
        self._clocks[name] = time.monotonic()
        self.save()
        return step

    def progress(self, name: str, fraction: float | None = None, *, bytes: int | None = None,
                 detail: str | None = None) -> None:
        step = self.get(name)
        if fraction is not None:
            step["fraction"] = max(0.0, min(0.99, float(fraction)))
        if bytes is not None:
            step["bytes"] = bytes
        if detail is not None:
            step["detail"] = detail[:500]
        if time.monotonic() - self.last_save >= self.save_interval:
            self.save()

    def finish(self, name: str, *, state: str = "succeeded", bytes: int | None = None, detail: str = "",
               data: dict | None = None) -> dict:
        step = self.get(name)
        began = self._clocks.get(name)
        step.update(state=state, finished_at=_iso(timezone.now()), detail=detail[:1000],
                    fraction=1.0 if state == "succeeded" else step["fraction"])
        if began is not None:
            step["duration_ms"] = int((time.monotonic() - began) * 1000)
        if bytes is not None:
            step["bytes"] = bytes
        if data is not None:
            step["data"] = data
        self.save()
        return step

    def skip(self, name: str, detail: str) -> None:
        self.get(name).update(state="skipped", detail=detail[:500], fraction=1.0)
        self.save()

    def fail_open(self, message: str) -> None:
        """Mark the running step failed and the steps that never started as not run."""
        for step in self.steps:
            if step["state"] == "running":
                self.finish(step["name"], state="failed", detail=message)
            elif step["state"] == "pending":
                step.update(state="not run")
        self.save()

    def percent(self) -> int:
        total = sum(s["weight"] for s in self.steps) or 1
        done = sum(s["weight"] * (1.0 if s["state"] in ("succeeded", "skipped") else s["fraction"])
                   for s in self.steps)
        return min(100, int(100 * done / total))

    def eta_seconds(self) -> int | None:
        """Time left at the pace so far; None until the run has done enough to say."""
        percent = self.percent()
        if percent < 3 or percent >= 100:
            return None
        elapsed = time.monotonic() - self.started
        return int(elapsed * (100 - percent) / percent)

    def _position(self) -> tuple:
        """What counts as progress: each step's state, bytes and fraction (not its wording, not the clock)."""
        return tuple((s["state"], s["bytes"], round(s["fraction"], 4)) for s in self.steps)

    def save(self) -> None:
        self.last_save = time.monotonic()
        now = timezone.now()
        fields = {self.field: self.steps, "percent": self.percent(), "heartbeat_at": now}
        if hasattr(self.run, "eta_seconds"):
            fields["eta_seconds"] = self.eta_seconds()
        position = self._position()
        if self._clocked and position != self._moved:
            self._moved = position
            fields["progress_at"] = now
        self.model.objects.filter(pk=self.run.pk).update(**fields)


class StepLog:
    """Steps appended as the run discovers them (``run.steps``), saved with a heartbeat as they change."""

    def __init__(self, run):
        self.run = run
        self.model = type(run)
        self.run.steps = []

    def start(self, name: str) -> dict:
        step = {"name": name, "state": "running", "started_at": timezone.now().isoformat(), "finished_at": None,
                "bytes": None, "detail": ""}
        self.run.steps.append(step)
        self._save()
        return step

    def finish(self, step: dict, *, state: str = "succeeded", bytes: int | None = None, detail: str = "") -> None:
        step.update(state=state, finished_at=timezone.now().isoformat(), bytes=bytes, detail=detail[:500])
        self._save()

    def fail_open(self, message: str) -> None:
        """Mark every step still running failed with ``message``."""
        for step in self.run.steps:
            if step["state"] == "running":
                self.finish(step, state="failed", detail=message)

    def _save(self) -> None:
        # Every save here is a step started or finished: progress.
        now = timezone.now()
        clock = {"progress_at": now} if has_progress_clock(self.model) else {}
        self.model.objects.filter(pk=self.run.pk).update(steps=self.run.steps, heartbeat_at=now, **clock)


class ByteProgress:
    """Throttled progress writes (``percent``, ``bytes_done``, ``heartbeat_at``) to the run row (the page polls it).

    The percent covers ``start`` to ``start + span``, from the bytes done out of ``expected``
    or from ``table_fraction`` (whichever says more), never 100 before the run says so.
    """

    def __init__(self, run, *, start: int, span: int, expected: int | None, count_bytes: bool = True,
                 interval: float = 0.5):
        self.run = run
        self.model = type(run)
        self.count_bytes = count_bytes
        self.start = start
        self.span = span
        self.expected = expected
        self.interval = interval
        self.table_fraction = 0.0
        self.last = 0.0
        self.bytes = 0
        self._clocked = has_progress_clock(self.model)
        self._moved: tuple | None = None

    def __call__(self, done: int) -> None:
        self.bytes = done
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self.flush()

    def fraction(self) -> float:
        by_bytes = min(0.99, self.bytes / self.expected) if self.expected else 0.0
        return max(by_bytes, min(0.99, self.table_fraction))

    def flush(self) -> None:
        percent = self.start + int(self.span * self.fraction())
        now = timezone.now()
        fields = {"bytes_done": self.bytes} if self.count_bytes else {}
        if self._clocked and (self.bytes, percent) != self._moved:
            self._moved = (self.bytes, percent)
            fields["progress_at"] = now
        self.model.objects.filter(pk=self.run.pk).update(percent=percent, heartbeat_at=now, **fields)


class Heartbeat:
    """Stamps ``heartbeat_at`` on the run's row every ``interval`` seconds from its own thread."""

    def __init__(self, run, interval: float | None = None):
        self.model = type(run)
        self.pk = run.pk
        self.interval = interval if interval is not None else settings.HEARTBEAT_SECONDS
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="run-heartbeat")

    def _run(self) -> None:
        try:
            while not self.stop.wait(self.interval):
                with contextlib.suppress(Exception):
                    self.model.objects.filter(pk=self.pk).update(heartbeat_at=timezone.now())
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=self.interval + 5)


# --- the body of a run -----------------------------------------------------------------------------

_body = threading.local()


@contextlib.contextmanager
def run_body():
    """Mark the block as the body of a run (its job's work, e.g. ``backup_run_execute``).

    What the run's commits set off and is not the run's own work — a health score recompute —
    is queued as a job of its own instead of being done here (``in_run_body``): the run is
    finished, and its worker free, as soon as its own rows are written.
    """
    depth = getattr(_body, "depth", 0)
    if depth == 0:
        _body.after = {}
    _body.depth = depth + 1
    try:
        yield
    finally:
        _body.depth = depth
        if depth == 0:
            after, _body.after = _body.after, {}
            for func in after.values():
                func()


def in_run_body() -> bool:
    """Whether this thread is inside ``run_body()``."""
    return getattr(_body, "depth", 0) > 0


def after_run_body(key, func: Callable[[], None]) -> None:
    """Call ``func`` once the run's body ends (at once outside one); a later ``func`` of the same ``key`` replaces
    an earlier one, so a run that moved a thing several times sets off one follow-up for it."""
    if not in_run_body():
        func()
        return
    _body.after[key] = func


# --- RQ ------------------------------------------------------------------------------------------


def job_status(job_id: str | None, queue: str) -> str | None:
    """The RQ status of a job ("missing" when Redis has no such job), or None when Redis cannot be asked."""
    if not job_id:
        return "missing"
    try:
        job = Job.fetch(job_id, connection=queues.get_connection(queue))
        status = job.get_status(refresh=False)
        return str(getattr(status, "value", status) or "missing")
    except NoSuchJobError:
        return "missing"
    except RedisError:
        return None


def stop_job(job_id: str | None, queue: str) -> str:
    """Make sure the job ``job_id`` does not (go on to) run: what was done, as a word for the audit event.

    A job a worker has started gets RQ's stop-job command (its worker kills the work horse,
    and the horse's children die with it); any other is cancelled (taken off its queue).
    "gone" when Redis has no such job, "unreachable" when Redis cannot be asked.
    """
    if not job_id:
        return "gone"
    connection_ = queues.get_connection(queue)
    try:
        job = Job.fetch(job_id, connection=connection_)
        status = str(getattr(job.get_status(refresh=True), "value", "") or "")
        if status == "started" and job.worker_name:
            send_stop_job_command(connection_, job_id)
            return "stopped"
        if status in ENDED:
            return status
        job.cancel()
        return "cancelled"
    except NoSuchJobError:
        return "gone"
    except InvalidJobOperation:
        return "ended"
    except RedisError:
        return "unreachable"


def wait_job_ended(job_id: str | None, queue: str, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the job to stop running; True once it has (or Redis has no such job)."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(job_id, queue)
        if status is not None and status != "started":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def failure_reason(exc_type, exc_value) -> str:
    """A failure callback's exception as a reason people can read."""
    name = getattr(exc_type, "__name__", str(exc_type))
    if name == "AbandonedJobError":
        return "its worker stopped (killed or lost): RQ found the job abandoned"
    if name == "WorkHorseKilled":
        return f"{exc_value}"
    if name == "JobTimeoutException":
        return f"the job ran past its time limit ({exc_value})"
    return f"the job failed: {name}: {exc_value}"[:1000]


def worker_host() -> str:
    """The host this process runs jobs on, recorded on each run it starts (``DRPANEL_WORKER_HOST``)."""
    return settings.WORKER_HOST


def pool_waiting(run_kind: RunKind, run) -> str:
    """Why a queued ``run`` cannot start, for its page: "no worker in pool B" when its pool has no live worker.

    "" when it is not queued, when a worker could take it, or when Redis cannot be asked (the
    page says nothing rather than something false)."""
    if run.state != run_kind.model.State.QUEUED:
        return ""
    pool = run_kind.pool_for(run.pk)
    try:
        if queues.pool_workers(queues.get_connection(run_kind.queue), pool):
            return ""
    except RedisError:
        return ""
    if pool:
        return f"no worker in pool {pool}: the run waits until one of its workers starts"
    return "no worker is running: the run waits until one starts"


# --- kinds of runs -------------------------------------------------------------------------------


class RunKind:
    """One kind of background run: its row, its job, and the hooks the reconciler and failure callbacks call.

    Subclasses set the attributes and implement ``fail`` (and ``record_requeue`` when
    ``reconciled``); ``tidy`` is for runs that leave something behind when they fail
    (``needs_cleanup``). The model has ``state`` (with ``QUEUED``, ``RUNNING``, ``FAILED``),
    ``job_id``, ``heartbeat_at``, ``started_at``, and, when reconciled here,
    ``enqueue_count`` and ``needs_cleanup``.
    """

    name: str = ""
    model = None
    queue: str = "default"
    job: str = ""  # dotted path of the job function; it takes the run id
    timeout: int = 3600
    on_failure: str | None = None  # dotted path of the RQ failure callback
    queued_since: str = "created_at"  # the row's field a lost job's wait is counted from
    reconciled: bool = False  # settled by ``reconcile_runs`` (else by the app's own reaper)
    max_enqueues: int = MAX_ENQUEUES

    def fail(self, run_id, reason: str, *, expected) -> bool:
        """Fail the run if it is still in one of the ``expected`` states (audited, tidied); False if it was not."""
        raise NotImplementedError

    def tidy(self, run) -> None:
        """Bring what a failed run left behind to a consistent state (``needs_cleanup``)."""

    def record_requeue(self, run, details: dict) -> None:
        """Audit that ``run`` is queued again (inside the requeue's transaction)."""
        raise NotImplementedError

    def timeout_for(self, run_id) -> int:
        """The RQ time limit of this run's job (``timeout`` unless the kind sizes it per run)."""
        return self.timeout

    def pool_for(self, run_id) -> str:
        """The worker pool whose queues carry this run's job ("" for the shared queues), read when it is queued."""
        return ""

    def record_job(self, run_id, job: Job) -> None:
        """Remember the job that carries the run, and count the enqueue."""
        self.model.objects.filter(pk=run_id).update(job_id=job.id, enqueue_count=F("enqueue_count") + 1)

    def enqueue(self, run_id) -> None:
        """Put the run's job on its queue now and remember it (also used to queue a lost job again)."""
        timeout, pool = self.job_options(run_id)
        self.record_job(run_id, queues.enqueue(self.job, str(run_id), queue=self.queue, timeout=timeout,
                                               on_failure=self.on_failure, pool=pool))

    def job_options(self, run_id) -> tuple[int, str]:
        """``(timeout_for, pool_for)`` of a run; a kind on a click's path reads both in one query."""
        return self.timeout_for(run_id), self.pool_for(run_id)

    def enqueue_on_commit(self, run_id) -> None:
        """Enqueue the run's job when the transaction commits; if Redis refuses, the request still stands."""
        timeout, pool = self.job_options(run_id)
        queues.enqueue_on_commit(self.job, str(run_id), queue=self.queue, timeout=timeout,
                                 on_failure=self.on_failure, then=lambda job: self.record_job(run_id, job), pool=pool)

    def job_failed(self, run_id, reason: str) -> bool:
        """An RQ failure callback: fail the run (queued or running) with the reason, and tidy up."""
        return self.fail(run_id, reason, expected=(self.model.State.QUEUED, self.model.State.RUNNING))


_KINDS: dict[str, RunKind] = {}


def register(kind: RunKind) -> RunKind:
    """Make ``kind`` known to the reconciler (the module that owns its runs registers it when imported)."""
    _KINDS[kind.name] = kind
    return kind


def kind(name: str) -> RunKind:
    return _KINDS[name]


def kinds(*, reconciled: bool | None = None) -> list[RunKind]:
    return [k for k in _KINDS.values() if reconciled is None or k.reconciled == reconciled]


# --- the reconciler --------------------------------------------------------------------------------


def stale_reason(run_kind: RunKind, run, now) -> str | None:
    """Why a running run can no longer finish (no heartbeat, no progress, or its RQ job ended), or None."""
    beat = run.heartbeat_at or run.started_at or now
    silent = (now - beat).total_seconds()
    status = job_status(run.job_id, run_kind.queue)
    if silent >= settings.RUN_STALE_SECONDS:
        return (f"no heartbeat for {silent:.0f} s: its worker died or was killed"
                + (f" (its RQ job is {status})" if status else ""))
    if has_progress_clock(run_kind.model):
        moved = run.progress_at or run.started_at or now
        still = (now - moved).total_seconds()
        if still >= settings.RUN_STALL_SECONDS:
            return (f"stalled: its progress has not moved for {still:.0f} s (DRPANEL_RUN_STALL_SECONDS is "
                    f"{settings.RUN_STALL_SECONDS}); its worker still answers, but the run is stuck")
    if status in ("missing", *ENDED) and silent >= settings.RUN_ENDED_JOB_GRACE_SECONDS:
        return f"its RQ job is {status}, yet the run never finished: its worker died"
    return None


def requeue(run_kind: RunKind, run) -> str:
    """A queued run whose job may be lost: "requeued", "failed", or "" (its job is fine or Redis cannot say)."""
    queued = run_kind.model.State.QUEUED
    status = job_status(run.job_id, run_kind.queue)
    if status is None or status in WAITING:
        return ""
    if status in DEAD:
        run_kind.fail(run.pk, f"its RQ job {status} before a worker started it", expected=(queued,))
        return "failed"
    if run.enqueue_count >= run_kind.max_enqueues:
        run_kind.fail(run.pk, f"its job was lost {run.enqueue_count} times (Redis flushed or unreachable): not "
                              "queued again", expected=(queued,))
        return "failed"
    with transaction.atomic():
        # Lock the row: two reconcilers (two cron hosts) must not both queue it again.
        locked = run_kind.model.objects.select_for_update().filter(pk=run.pk, state=queued,
                                                                   job_id=run.job_id).first()
        if locked is None:
            return ""
        run_kind.record_requeue(run, {"run": str(run.pk), "lost_job": run.job_id or None, "rq_status": status,
                                      "enqueued_before": run.enqueue_count})
        run_kind.enqueue_on_commit(run.pk)
    return "requeued"


def reconcile_runs(now=None, summary: dict | None = None, *, run_kinds=None) -> dict:
    """Settle the runs of ``run_kinds`` (default: every reconciled kind) that can no longer finish on their own.

    - a **running** run whose heartbeat stopped for ``DRPANEL_RUN_STALE_SECONDS``, whose
      progress has not moved for ``DRPANEL_RUN_STALL_SECONDS`` (heartbeat or not), or whose RQ
      job ended ``DRPANEL_RUN_ENDED_JOB_GRACE_SECONDS`` ago or more, is failed with the reason;
    - a **queued** run waiting ``DRPANEL_RUN_LOST_JOB_SECONDS`` whose RQ job vanished is queued
      again, at most ``max_enqueues`` times in all, then failed; one whose job failed before
      it started is failed;
    - a failed (or cancelled) run still marked ``needs_cleanup`` is tidied again.
    """
    now = now or timezone.now()
    summary = summary if summary is not None else {}
    for key in ("failed", "requeued", "tidied"):
        summary.setdefault(key, [])
    reconciled = list(run_kinds) if run_kinds is not None else kinds(reconciled=True)
    for run_kind in reconciled:
        for run in run_kind.model.objects.filter(state=run_kind.model.State.RUNNING):
            reason = stale_reason(run_kind, run, now)
            if reason and run_kind.fail(run.pk, reason, expected=(run_kind.model.State.RUNNING,)):
                summary["failed"].append(str(run.pk))
    lost_before = now - timezone.timedelta(seconds=settings.RUN_LOST_JOB_SECONDS)
    for run_kind in reconciled:
        waiting = run_kind.model.objects.filter(state=run_kind.model.State.QUEUED,
                                                **{f"{run_kind.queued_since}__lte": lost_before})
        for run in waiting:
            outcome = requeue(run_kind, run)
            if outcome:
                summary["requeued" if outcome == "requeued" else "failed"].append(str(run.pk))
    for run_kind in reconciled:
        ended = [run_kind.model.State.FAILED, *([run_kind.model.State.CANCELLED]
                                                if hasattr(run_kind.model.State, "CANCELLED") else [])]
        for run in run_kind.model.objects.filter(state__in=ended, needs_cleanup=True):
            run_kind.tidy(run)
            summary["tidied"].append(str(run.pk))
    return summary
