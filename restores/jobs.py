"""Jobs of the restores app: thin functions taking ids; the services do the work, the audit and the state.

Services enqueue these by dotted path (``drpanel.queues``). ``*_job_failed`` are RQ failure
callbacks (``on_failure``): they run in a worker when a job raised, when its work horse died
(``drpanel.worker.PanelWorker``) or when another worker's registry clean-up found it
abandoned (its worker died); they mark the run failed through its kind (``drpanel.runs``).
"""

from drpanel.runs import failure_reason
from restores import incident_steps, reliability, shipping, verifications
from restores.execution import RESTORE_RUNS, restore_run_execute
from restores.recovery_checks import recovery_checks_refresh_open
from restores.requests import restore_expire_due
from restores.rollback import restore_copies_drop_due
from restores.verifications import VERIFICATION_RUNS


def restore_run_job(run_id: str) -> str:
    """Execute one queued restore; the run row records the outcome (a second delivery does nothing)."""
    return restore_run_execute(run_id).state


def ship_send_job(run_id: str, backup_id: str) -> str:
    """On the Barman host's worker: recover a whole-server run's point and send the directory to its target host."""
    shipped = shipping.ship_send(run_id, backup_id)
    return "sent" if shipped is not None else "failed"


def verification_run_job(run_id: str) -> str:
    """Execute one queued verification; the run row records the outcome."""
    return verifications.verification_execute(run_id).state


def incident_step_job(step_id: str) -> str:
    """Run one automatic incident step (assess, health checks); the step row records the outcome."""
    step = incident_steps.incident_step_execute(step_id)
    return step.state if step else "missing"


def incident_step_job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of ``incident_step_job``."""
    incident_steps.INCIDENT_STEP_RUNS.job_failed(job.args[0], failure_reason(exc_type, exc_value))


def restore_job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of ``restore_run_job``."""
    RESTORE_RUNS.job_failed(job.args[0], failure_reason(exc_type, exc_value))


def verification_job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of ``verification_run_job``."""
    VERIFICATION_RUNS.job_failed(job.args[0], failure_reason(exc_type, exc_value))


def reconcile_job() -> dict:
    """Every minute: expire unapproved restores, then reconcile runs with RQ and with their databases."""
    expired = restore_expire_due()
    summary = reliability.reconcile()
    summary["expired"] = expired
    summary["checklists"] = recovery_checks_refresh_open()
    summary["incident_steps"] = incident_steps.incident_steps_reconcile()
    return summary


def drop_copies_job() -> int:
    """Hourly: drop pre-restore copies whose rollback window passed."""
    return restore_copies_drop_due()


def verify_daily_job() -> int:
    """Daily: the newest full artifact of each system at the decrypt level."""
    return len(verifications.schedule_daily())


def verify_weekly_job() -> int:
    """Weekly: a random full artifact of the last 30 days of each system at the restore-test level."""
    return len(verifications.schedule_weekly())
