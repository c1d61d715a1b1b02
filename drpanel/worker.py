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
"""

import contextlib
import ctypes
import os
import signal

from rq.worker import Worker

PR_SET_PDEATHSIG = 1


class WorkHorseKilled(Exception):
    """The work horse running a job died without finishing it (signal, OOM killer)."""


def _die_with_parent(parent_pid: int | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        # The worker died between fork() and prctl(): nobody would watch this job.
        os._exit(1)


class PanelWorker(Worker):
    """An rq ``Worker`` with the panel's shorter timings (overridable from the environment)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("maintenance_interval", int(os.environ.get("DRPANEL_WORKER_MAINTENANCE_SECONDS", 15)))
        kwargs.setdefault("worker_ttl", int(os.environ.get("DRPANEL_WORKER_TTL_SECONDS", 60)))
        kwargs.setdefault("job_monitoring_interval", int(os.environ.get("DRPANEL_JOB_HEARTBEAT_SECONDS", 10)))
        super().__init__(*args, **kwargs)

    def main_work_horse(self, job, queue):
        _die_with_parent(self.pid)
        super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        signal_note = f" by signal {os.WTERMSIG(ret_val)}" if ret_val and os.WIFSIGNALED(ret_val) else ""
        exc = WorkHorseKilled(f"the process running the job died{signal_note} (exit status {ret_val})")
        with contextlib.suppress(Exception):
            job.execute_failure_callback(self.death_penalty_class, WorkHorseKilled, exc, None)
