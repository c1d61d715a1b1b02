"""A job the deployment test enqueues by dotted path: it logs one line and reports on a Redis list."""

import logging

from rq import get_current_job

log = logging.getLogger("drpanel.deploy_test")


def logged_report(key: str) -> str:
    """Log "deploy job ran" (with the job's id, from the log filter) and push the job id onto ``key``."""
    job = get_current_job()
    log.info("deploy job ran")
    job.connection.rpush(key, job.id)
    return job.id
