"""Schedules run by ``manage.py rqcron drpanel.cron`` (rq's built-in cron, started by ``make demo``).

Each app registers its periodic jobs here, next to each other, so the whole schedule of
the panel reads on one screen.
"""

from rq import cron

from drpanel.jobs import clear_expired_sessions

cron.register(clear_expired_sessions, queue_name="default", cron="17 3 * * *")

# Compliance: alert escalation, the daily checklist, the contact review. Times are UTC.
from compliance.jobs import (  # noqa: E402 - grouped with its schedule
    alerts_escalate_job,
    checklist_evaluate_job,
    checklist_open_job,
    contacts_review_job,
)

cron.register(alerts_escalate_job, queue_name="default", cron="* * * * *")
cron.register(checklist_open_job, queue_name="default", cron="5 0 * * *")
cron.register(checklist_evaluate_job, queue_name="default", cron="45 23 * * *")
cron.register(contacts_review_job, queue_name="default", cron="0 8 * * *")
