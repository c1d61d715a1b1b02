"""Schedules run by ``manage.py rqcron drpanel.cron`` (rq's built-in cron, started by ``make demo``).

Each app registers its periodic jobs here, next to each other, so the whole schedule of
the panel reads on one screen. Times are UTC. Queues are this installation's
(``drpanel.queues.queue_name``), so two panels sharing a Redis each schedule into their own.
"""

from rq import cron

from backups import jobs as backup_jobs
from compliance.audit.jobs import audit_checkpoint_job
from compliance.jobs import (
    alerts_escalate_job,
    certification_due_job,
    checklist_evaluate_job,
    checklist_open_job,
    contacts_review_job,
    deliveries_retry_job,
    health_recompute_job,
    incidents_escalate_job,
    scheduler_check_job,
)
from drpanel import cron_heartbeat
from drpanel.jobs import clear_expired_sessions, unknown_signin_failures_job
from drpanel.queues import claim_installation, get_connection, queue_name
from restores import jobs as restore_jobs

# The scheduler starts by loading this module: it refuses to schedule into another panel's queues.
claim_installation()
# Its heartbeat, read by /health, /metrics and the check below (drpanel.cron_heartbeat).
cron_heartbeat.start_beating(get_connection())

cron.register(clear_expired_sessions, queue_name=queue_name("default"), cron="17 3 * * *")
cron.register(unknown_signin_failures_job, queue_name=queue_name("default"), cron="* * * * *")

# Backups: policy schedules, stale-run reaping, approval expiry, retention, inventory sync.
cron.register(backup_jobs.schedule_tick, queue_name=queue_name("default"), cron="* * * * *")
cron.register(backup_jobs.expire_approvals, queue_name=queue_name("default"), cron="* * * * *")
cron.register(backup_jobs.reap_stale_runs, queue_name=queue_name("default"), cron="* * * * *")
cron.register(backup_jobs.retention_job, queue_name=queue_name("backup"), cron="40 * * * *")
cron.register(backup_jobs.inventory_tick, queue_name=queue_name("default"), cron="10 */6 * * *")
# Continuous protection: Barman's configuration, receivers (restarted when killed) and WAL catalog.
cron.register(backup_jobs.continuous_tick, queue_name=queue_name("default"), cron="* * * * *")

# Compliance: the audit checkpoint, alert and incident escalation, the daily checklist, the contact review, the
# notification retries.
cron.register(audit_checkpoint_job, queue_name=queue_name("default"), cron="0 * * * *")
cron.register(alerts_escalate_job, queue_name=queue_name("default"), cron="* * * * *")
cron.register(incidents_escalate_job, queue_name=queue_name("default"), cron="* * * * *")
cron.register(checklist_open_job, queue_name=queue_name("default"), cron="5 0 * * *")
cron.register(checklist_evaluate_job, queue_name=queue_name("default"), cron="45 23 * * *")
cron.register(contacts_review_job, queue_name=queue_name("default"), cron="0 8 * * *")
cron.register(deliveries_retry_job, queue_name=queue_name("default"), cron="* * * * *")
cron.register(scheduler_check_job, queue_name=queue_name("default"), cron="* * * * *")
cron.register(certification_due_job, queue_name=queue_name("default"), cron="0 9 1-10 * *")

# Health: every system's score, its history and its alerts (also recomputed after each relevant event).
cron.register(health_recompute_job, queue_name=queue_name("default"), cron="*/15 * * * *")

# Restores: the reconciler (expiry, dead workers, lost jobs, half-done swaps, orphans), the end of
# rollback windows, and scheduled verifications (daily decrypt of the newest full, weekly restore-test).
cron.register(restore_jobs.reconcile_job, queue_name=queue_name("default"), cron="* * * * *")
cron.register(restore_jobs.drop_copies_job, queue_name=queue_name("default"), cron="25 * * * *")
cron.register(restore_jobs.verify_daily_job, queue_name=queue_name("default"), cron="30 2 * * *")
cron.register(restore_jobs.verify_weekly_job, queue_name=queue_name("default"), cron="30 3 * * 0")
