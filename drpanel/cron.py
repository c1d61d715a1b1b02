"""Schedules run by ``manage.py rqcron drpanel.cron`` (rq's built-in cron, started by ``make demo``).

Each app registers its periodic jobs here, next to each other, so the whole schedule of
the panel reads on one screen.
"""

from rq import cron

from compliance.audit_jobs import audit_checkpoint_job
from drpanel.jobs import clear_expired_sessions

cron.register(clear_expired_sessions, queue_name="default", cron="17 3 * * *")
cron.register(audit_checkpoint_job, queue_name="default", cron="0 * * * *")
