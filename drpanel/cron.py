"""Schedules run by ``manage.py rqcron drpanel.cron`` (rq's built-in cron, started by ``make demo``).

Each app registers its periodic jobs here, next to each other, so the whole schedule of
the panel reads on one screen.
"""

from rq import cron

from drpanel.jobs import clear_expired_sessions

cron.register(clear_expired_sessions, queue_name="default", cron="17 3 * * *")
