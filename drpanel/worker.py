"""The RQ worker the panel runs: short heartbeats and frequent registry maintenance.

With rq's defaults a job whose whole worker was killed stays "started" for more than ten
minutes. A DR tool must notice that within a couple of minutes, so workers heartbeat
every 10 s, expire after 60 s of silence and clean the registries every 15 s.
"""

import os

from rq.worker import Worker


class PanelWorker(Worker):
    """An rq ``Worker`` with the panel's shorter timings (overridable from the environment)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("maintenance_interval", int(os.environ.get("DRPANEL_WORKER_MAINTENANCE_SECONDS", 15)))
        kwargs.setdefault("worker_ttl", int(os.environ.get("DRPANEL_WORKER_TTL_SECONDS", 60)))
        kwargs.setdefault("job_monitoring_interval", int(os.environ.get("DRPANEL_JOB_HEARTBEAT_SECONDS", 10)))
        super().__init__(*args, **kwargs)
