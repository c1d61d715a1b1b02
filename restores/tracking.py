"""What a running job writes to its run row: steps, overall percent and ETA, heartbeats, and the swap lock.

- ``StepList`` keeps a run's planned steps (each with a weight), saves them as they change
  (throttled for progress), and derives the overall percent and an ETA from the time spent
  so far;
- ``Heartbeat`` is a thread that stamps ``heartbeat_at`` every few seconds while the job's
  body runs, whatever it is doing (a long ``pg_restore``, a slow sanity query): a run
  whose heartbeat stops is a run whose worker died (``restores.reliability``);
- ``target_lock`` serialises everything that renames a target's databases (a worker's swap,
  a rollback, the reconciler) through a PostgreSQL advisory lock on the panel's database.
"""

import contextlib
import threading
import time

from django.db import connection, transaction
from django.utils import timezone

# Any constant works as long as every process uses the same one ("DRRS").
SWAP_LOCK_NAMESPACE = 0x44525253
HEARTBEAT_SECONDS = 5


def _iso(value) -> str | None:
    return value.isoformat() if value else None


class StepList:
    """The steps of one run, saved on the row (``model.steps`` or ``model.results``) as they change."""

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

    def save(self) -> None:
        self.last_save = time.monotonic()
        self.model.objects.filter(pk=self.run.pk).update(**{
            self.field: self.steps, "percent": self.percent(), "heartbeat_at": timezone.now(),
            **({"eta_seconds": self.eta_seconds()} if hasattr(self.run, "eta_seconds") else {})})


class Heartbeat:
    """Stamps ``heartbeat_at`` on the run's row every ``interval`` seconds from its own thread."""

    def __init__(self, run, interval: float = HEARTBEAT_SECONDS):
        self.model = type(run)
        self.pk = run.pk
        self.interval = interval
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


@contextlib.contextmanager
def target_lock(target_id: int):
    """Hold the swap lock of one target for the block (inside a transaction of the panel's database)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SWAP_LOCK_NAMESPACE, int(target_id)])
        yield
