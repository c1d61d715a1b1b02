"""Jobs of the backup catalog: thin functions taking ids; the services do the work and the audit."""

from backups import services


def backup_run_job(run_id: str) -> str:
    """Run one queued backup; the run row records the outcome."""
    return services.backup_run_execute(run_id).state


def key_rotation_job(to_key_id: str) -> dict:
    return services.key_rotation_execute(to_key_id)


def inventory_sync_job(run_id: str) -> str:
    from backups.inventory import inventory_sync_execute

    return inventory_sync_execute(run_id).state


def schedule_tick() -> int:
    """Every minute: queue the backups each system's policy says are due."""
    from backups.schedules import enqueue_due_backups

    return len(enqueue_due_backups())


def retention_job() -> int:
    from backups.retention import retention_apply_all

    return retention_apply_all()


def reap_stale_runs() -> int:
    return services.backup_runs_reap()


def expire_approvals() -> int:
    from drpanel.approvals import approval_expire_due

    return approval_expire_due()


def inventory_tick() -> str:
    return str(services.inventory_request(actor=None).id)
