"""Jobs of the backup catalog: thin functions taking ids; the services do the work and the audit.

Services enqueue these by dotted path (``drpanel.queues``), so nothing here is imported back
by the services it calls.
"""

from backups import continuous, offsite
from backups.inventory import inventory_request, inventory_sync_execute
from backups.keyrotation import key_rotation_execute
from backups.models import System
from backups.retention import retention_apply_all
from backups.runs import backup_run_execute, backup_runs_reap
from backups.schedules import enqueue_due_backups
from drpanel.approvals import approval_expire_due


def backup_run_job(run_id: str) -> str:
    """Run one queued backup; the run row records the outcome."""
    return backup_run_execute(run_id).state


def key_rotation_job(to_key_id: str) -> dict:
    """Re-wrap every artifact not yet under ``to_key_id``."""
    return key_rotation_execute(to_key_id)


def inventory_sync_job(run_id: str) -> str:
    """Compare every location with the catalog (one queued inventory run)."""
    return inventory_sync_execute(run_id).state


def schedule_tick() -> int:
    """Every minute: queue the backups each system's policy says are due."""
    return len(enqueue_due_backups())


def retention_job() -> int:
    """Hourly: delete what each system's retention policy no longer keeps."""
    return retention_apply_all()


def reap_stale_runs() -> int:
    """Every minute: settle backup runs whose worker died or whose job was lost."""
    return backup_runs_reap()


def expire_approvals() -> int:
    """Every minute: expire approvals nobody decided in time."""
    return approval_expire_due()


def inventory_tick() -> str:
    """Every six hours: queue an inventory sync (as the system)."""
    return str(inventory_request(actor=None).id)


def continuous_tick() -> int:
    """Every minute (cron, any worker): each pool's tick queued for its own workers, the systems without a pool
    ticked here (``continuous.continuous_minute``)."""
    return continuous.continuous_minute()


def continuous_pool_tick(pool: str) -> int:
    """The minute's tick of one pool's systems, on that pool's worker (see ``continuous_tick``)."""
    return continuous.continuous_tick(pool=pool)


def continuous_check_job(system_id: int) -> bool | None:
    """Run ``barman check`` for one system; the result is stored on its continuous state."""
    return continuous.continuous_check(System.objects.get(pk=system_id)).check_ok


def offsite_run_job(run_id: str) -> str:
    """Copy a system's base backups and archived WAL not yet off-site (one queued off-site run)."""
    return offsite.offsite_run_execute(run_id).state
